"""Every interface of pixsearch: command line, HTTP API and web page."""
