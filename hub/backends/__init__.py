"""Implementations of the ``Backend`` port (``hub.domain.servers.Backend``).

    from hub.backends.docker import DockerBackend
    backend = DockerBackend(docker.from_env(), hub_id="h1", executor=pool)

Import the module you need; this package imports nothing by itself, so that
code using only a fake backend does not pull in the Docker SDK.
"""
