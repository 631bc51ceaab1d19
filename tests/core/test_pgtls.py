"""TLS to PostgreSQL with sslmode=verify-full, against a throwaway cluster with ssl = on and a
server certificate for localhost signed by a throwaway CA: the right root connects; another
CA's root is refused in one clear line by `edgehook doctor` and `edgehook store migrate`, and
the URL's password appears in neither."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core import pgstore
from tests.conftest import Workspace, free_port, run_edgehook
from tests.pg import USER, Cluster, binaries

pytestmark = pytest.mark.slow  # a cluster of its own and `edgehook doctor`: ~20 s

PASSWORD = "tls-test-password-9f3c"  # a throwaway: trust auth ignores it


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey]
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if subject == issuer[0]:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[Cluster, int, Path, Path]]:
    """(cluster, port, the CA that signed the server's cert, another CA)."""
    found = binaries()
    if found is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    cluster = Cluster(found)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "other", "server")}
    ca = _certificate("edgehook test CA", keys["ca"], ("edgehook test CA", keys["ca"]))
    other = _certificate("another CA", keys["other"], ("another CA", keys["other"]))
    server = _certificate("localhost", keys["server"], ("edgehook test CA", keys["ca"]))
    _pem(cluster.dir / "server.crt", server)
    key = cluster.dir / "server.key"
    key.write_bytes(
        keys["server"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)  # PostgreSQL refuses a key others can read
    if os.geteuid() == 0:
        for path in (cluster.dir / "server.crt", key):
            shutil.chown(path, "nobody")
    port = free_port()
    cluster.start(
        f"-p {port} -c listen_addresses=localhost -c ssl=on "
        f"-c ssl_cert_file={cluster.dir}/server.crt -c ssl_key_file={key}"
    )
    try:
        yield (
            cluster,
            port,
            _pem(cluster.dir / "ca.pem", ca),
            _pem(cluster.dir / "other.pem", other),
        )
    finally:
        cluster.stop("immediate")
        cluster.remove()


def _url(port: int, root: Path) -> str:
    return (
        f"postgresql://{USER}:{PASSWORD}@localhost:{port}/postgres"
        f"?sslmode=verify-full&sslrootcert={root}"
    )


def test_verify_full_connects_with_the_right_root(
    tls_cluster: tuple[Cluster, int, Path, Path],
) -> None:
    _, port, ca, _ = tls_cluster
    store = pgstore.PgStore(_url(port, ca), timeout_s=5.0)
    try:
        used = store.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert used.fetchone() == (True,)
    finally:
        store.close()


def test_another_ca_is_refused_in_one_clear_line(
    tls_cluster: tuple[Cluster, int, Path, Path], workspace: Workspace
) -> None:
    _, port, _, other = tls_cluster
    env = {**os.environ, "EDGEHOOK_STORE_URL": _url(port, other)}
    redacted = f"postgresql://{USER}:***@localhost:{port}/postgres"
    doctor = run_edgehook("doctor", cwd=workspace.dir, config=workspace.config_path, env=env)
    migrate = run_edgehook(
        "store", "migrate", cwd=workspace.dir, config=workspace.config_path, env=env
    )
    line = f"cannot reach the store at {redacted}?sslmode=verify-full&sslrootcert={other}: "
    line += "TLS: the server's certificate did not verify against sslrootcert"
    assert (doctor.returncode, migrate.returncode) == (2, 1)
    assert f"FAIL  store      {line}\n" in doctor.stdout
    assert (migrate.stdout, migrate.stderr) == ("", f"edgehook: {line}\n")
    for result in (doctor, migrate):
        assert "Traceback" not in result.stderr
        assert PASSWORD not in result.stdout + result.stderr
