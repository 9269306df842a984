"""One module per tab: each has ``build_*_tab()`` (layout and glue) and plain functions that compute results."""
