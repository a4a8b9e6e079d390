"""edgenode: a CDN edge node on Twisted with per-domain and per-origin origin SNI."""
