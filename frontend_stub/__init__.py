"""The web page, importable as `middlewared_plugin.frontend` (setup.py maps this directory there) so that
installed copies ship it and the server finds it through importlib.resources, installed or editable."""
