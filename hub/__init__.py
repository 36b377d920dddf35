"""labdock: a self-hosted launcher of data-science workspaces.

$ labdock serve --port 8000
"""

__version__ = "0.1.0"
