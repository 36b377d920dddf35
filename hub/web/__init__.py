"""HTTP: pages, REST API, health, and (later) the proxy to user servers."""
