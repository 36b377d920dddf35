"""The proxy to users' servers, apart from the hub's tornado handlers.

    front = FrontProxy(config, pool=ConnectionPool())     # hub.proxy.fast: the public port
    await front.listen("127.0.0.1", 8000)

The fast front (``fast``, ``gate``, ``relay``, ``pool``, ``wire``), the rules of
what crosses it (``headers``), who a request speaks for (``auth``), open sockets
and streams watched for revocation (``tunnels``), subdomain mode's rules
(``user_hosts``) and the upstream client of the hub's own handler (``upstream``,
``ws``). Whether a request may pass is ``hub.domain.access.decide``. This
package never imports ``hub.web``: the hub's side of the proxy (its ``/user/``
handlers, pages and wiring) lives there and imports from here.
"""
