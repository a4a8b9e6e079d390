from twisted.application.service import ServiceMaker

edgenode = ServiceMaker(
    "edgenode",
    "edgenode.control.service",
    "CDN edge node: HTTPS back-to-origin with origin SNI",
    "edgenode",
)
