#!/usr/bin/env python3
"""A TLS front for a plain-HTTP local server (ministack), so functions reach
their AWS services over HTTPS as they do on AWS and a cold start pays for
the TLS handshakes (loopback has no network latency; the handshake's CPU
is what this adds).

    infra/local/tls-proxy.py --listen 4567 --upstream 127.0.0.1:4566 --certs DIR

Makes a throwaway CA and a certificate for 127.0.0.1 in DIR (RSA 2048, as
AWS endpoints' certificates are) with the `openssl` command, then forwards
every connection's bytes after the handshake. A function trusts the CA with
`SSL_CERT_FILE=DIR/ca.pem` (rustls-native-certs reads it). Used by
`infra/local/measure-cold-start.sh`; binds loopback only.
"""
import argparse
import asyncio
import os
import ssl
import subprocess


def make_certs(d):
    os.makedirs(d, exist_ok=True)
    ca, key, csr, crt = (os.path.join(d, n) for n in ("ca", "server.key", "server.csr", "server.pem"))
    if os.path.exists(crt):
        return crt, key
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=metered local CA", "-keyout", ca + ".key", "-out", ca + ".pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", key, "-out", csr)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca + ".pem", "-CAkey", ca + ".key",
        "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt)
    return crt, key


async def pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port of the plain-HTTP server")
    ap.add_argument("--certs", required=True, help="folder for the CA and the server certificate")
    args = ap.parse_args()
    crt, key = make_certs(args.certs)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    host, port = args.upstream.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, up_writer), pump(up_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", args.listen, ssl=ctx)
        print(f"tls-proxy: https://127.0.0.1:{args.listen} -> http://{args.upstream}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
