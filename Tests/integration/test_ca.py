"""agentctl ca init / issue-intermediate: the files an operator makes for the
local CA, checked with the real binary and the openssl command line tool."""
import calendar
import os
import stat
import subprocess
import time

from conftest import BIN

TD = "cluster.local"


def ctl(*args):
    return subprocess.run([str(BIN / "agentctl"), *[str(a) for a in args]], capture_output=True, text=True, timeout=60)


def openssl(*args, check=True):
    return subprocess.run(["openssl", *[str(a) for a in args]], capture_output=True, text=True, timeout=60, check=check)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def make_root(tmp_path, *extra):
    root = tmp_path / "root"
    result = ctl("ca", "init", "--trust-domain", TD, "--out", root, *extra)
    assert result.returncode == 0, result.stderr
    return root, result


def make_node(tmp_path, root, name="node-a", *extra):
    out = tmp_path / name
    result = ctl("ca", "issue-intermediate", "--ca", root, "--name", name, "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    return out, result


def assert_no_key_material(result):
    for text in (result.stdout, result.stderr):
        assert "PRIVATE KEY" not in text
        assert "BEGIN" not in text


def test_init_and_issue_intermediate_write_the_files_with_exact_modes(tmp_path):
    root, init = make_root(tmp_path)
    assert mode(root) == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["root.key", "root.pem"]
    assert mode(root / "root.key") == 0o600
    assert mode(root / "root.pem") == 0o644
    assert str(root / "root.key") in init.stdout and str(root / "root.pem") in init.stdout
    assert "issue-intermediate" in init.stdout  # the next step
    assert_no_key_material(init)

    node, issue = make_node(tmp_path, root)
    assert sorted(p.name for p in node.iterdir()) == ["bundle.pem", "intermediate.key", "intermediate.pem"]
    assert mode(node / "intermediate.key") == 0o600
    assert mode(node / "intermediate.pem") == 0o644
    assert mode(node / "bundle.pem") == 0o644
    for name in ("intermediate.key", "intermediate.pem", "bundle.pem"):
        assert str(node / name) in issue.stdout
    assert "URI:" + TD in issue.stdout
    assert_no_key_material(issue)

    # The bundle is the root; the key files are real keys for their certificates.
    assert openssl("x509", "-in", node / "bundle.pem", "-noout", "-fingerprint", "-sha256").stdout == \
        openssl("x509", "-in", root / "root.pem", "-noout", "-fingerprint", "-sha256").stdout
    for cert, key in ((root / "root.pem", root / "root.key"), (node / "intermediate.pem", node / "intermediate.key")):
        assert openssl("x509", "-in", cert, "-noout", "-pubkey").stdout == openssl("pkey", "-in", key, "-pubout").stdout


def test_modes_do_not_depend_on_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        root, _ = make_root(tmp_path)
        node, _ = make_node(tmp_path, root)
    finally:
        os.umask(previous)
    assert mode(root / "root.pem") == 0o644
    assert mode(node / "intermediate.pem") == 0o644
    assert mode(node / "bundle.pem") == 0o644
    assert mode(node / "intermediate.key") == 0o600
    assert mode(node) == 0o755


def test_openssl_verifies_the_intermediate_against_the_bundle(tmp_path):
    root, _ = make_root(tmp_path)
    node, _ = make_node(tmp_path, root)
    result = openssl("verify", "-CAfile", node / "bundle.pem", node / "intermediate.pem", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
    strict = openssl("verify", "-x509_strict", "-CAfile", node / "bundle.pem", node / "intermediate.pem", check=False)
    assert strict.returncode == 0, strict.stdout + strict.stderr
    # A different root does not vouch for it.
    other = tmp_path / "other"
    assert ctl("ca", "init", "--trust-domain", TD, "--out", other).returncode == 0
    foreign = openssl("verify", "-CAfile", other / "root.pem", node / "intermediate.pem", check=False)
    assert foreign.returncode != 0


def test_openssl_shows_the_certificate_profiles(tmp_path):
    root, _ = make_root(tmp_path)
    node, _ = make_node(tmp_path, root)
    text = openssl("x509", "-in", node / "intermediate.pem", "-noout", "-text").stdout
    assert "X509v3 Name Constraints: critical" in text
    assert "Permitted:" in text and f"URI:{TD}" in text
    assert "X509v3 Basic Constraints: critical" in text and "CA:TRUE, pathlen:0" in text
    assert "X509v3 Key Usage: critical" in text and "Certificate Sign, CRL Sign" in text
    assert "X509v3 Subject Key Identifier" in text and "X509v3 Authority Key Identifier" in text
    assert "ecdsa-with-SHA256" in text
    assert openssl("x509", "-in", node / "intermediate.pem", "-noout", "-subject", "-nameopt", "RFC2253").stdout.strip() == \
        f"subject=CN=mesh-agent node node-a,O={TD}"

    root_text = openssl("x509", "-in", root / "root.pem", "-noout", "-text").stdout
    assert "CA:TRUE" in root_text and "pathlen" not in root_text
    assert "Name Constraints" not in root_text
    assert openssl("x509", "-in", root / "root.pem", "-noout", "-subject", "-nameopt", "RFC2253").stdout.strip() == \
        f"subject=CN=mesh-agent root,O={TD}"


def openssl_leaf(tmp_path, node, uri, name):
    """A leaf for `uri` signed by the node intermediate with the openssl CLI."""
    key = tmp_path / f"{name}.key"
    csr = tmp_path / f"{name}.csr"
    cert = tmp_path / f"{name}.pem"
    ext = tmp_path / f"{name}.ext"
    ext.write_text(
        f"subjectAltName=critical,URI:{uri}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-subj", "/O=test", "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", node / "intermediate.pem", "-CAkey", node / "intermediate.key",
            "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", cert)
    return cert


def test_the_name_constraint_confines_the_node_ca_to_its_trust_domain(tmp_path):
    root, _ = make_root(tmp_path)
    node, _ = make_node(tmp_path, root)

    def verify(cert):
        return openssl("verify", "-x509_strict", "-CAfile", node / "bundle.pem", "-untrusted", node / "intermediate.pem",
                       cert, check=False)

    good = verify(openssl_leaf(tmp_path, node, f"spiffe://{TD}/ns/shop/sa/orders", "good"))
    assert good.returncode == 0, good.stdout + good.stderr
    for name, uri in (("evil", "spiffe://evil.test/ns/shop/sa/orders"), ("sub", f"spiffe://sub.{TD}/ns/shop/sa/orders")):
        refused = verify(openssl_leaf(tmp_path, node, uri, name))
        assert refused.returncode != 0, f"{uri} was accepted"
        assert "permitted subtree violation" in refused.stdout + refused.stderr


def test_lifetimes_default_and_flag(tmp_path):
    root, _ = make_root(tmp_path)
    node, _ = make_node(tmp_path, root, "node-a", "--lifetime", "720h")

    def end(path):
        text = openssl("x509", "-in", path, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
        return calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y %Z"))

    now = time.time()
    assert abs(end(root / "root.pem") - (now + 3650 * 86400)) < 300
    assert abs(end(node / "intermediate.pem") - (now + 30 * 86400)) < 300

    days, _ = make_node(tmp_path, root, "node-b", "--lifetime", "2d")
    assert abs(end(days / "intermediate.pem") - (now + 2 * 86400)) < 300

    bad = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node-c", "--out", tmp_path / "node-c", "--lifetime", "10")
    assert bad.returncode != 0
    assert "lifetime" in bad.stderr
    assert not (tmp_path / "node-c").exists()


def test_existing_output_files_are_never_overwritten(tmp_path):
    root, _ = make_root(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    again = ctl("ca", "init", "--trust-domain", TD, "--out", root)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert str(root / "root.") in again.stderr
    assert again.stdout == ""
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before

    node, _ = make_node(tmp_path, root)
    node_before = {p.name: p.read_bytes() for p in node.iterdir()}
    repeat = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node-a", "--out", node)
    assert repeat.returncode == 1
    assert "already exists" in repeat.stderr
    assert {p.name: p.read_bytes() for p in node.iterdir()} == node_before

    # One stray file is enough to refuse, and nothing else gets written.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "bundle.pem").write_text("keep\n")
    refused = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node-b", "--out", partial)
    assert refused.returncode == 1
    assert str(partial / "bundle.pem") in refused.stderr
    assert sorted(p.name for p in partial.iterdir()) == ["bundle.pem"]


def test_missing_ca_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-ca"
    result = ctl("ca", "issue-intermediate", "--ca", missing, "--name", "node-a", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "agentctl ca init" in result.stderr
    assert not (tmp_path / "out").exists()


def test_other_errors_exit_1_with_a_message(tmp_path):
    bad_domain = ctl("ca", "init", "--trust-domain", "Cluster.Local", "--out", tmp_path / "x")
    assert bad_domain.returncode == 1
    assert "trust domain" in bad_domain.stderr
    assert not (tmp_path / "x").exists()

    root, _ = make_root(tmp_path)
    bad_name = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node a", "--out", tmp_path / "n")
    assert bad_name.returncode == 1
    assert "node name" in bad_name.stderr

    # A root key others can read is refused with the fix spelled out.
    os.chmod(root / "root.key", 0o644)
    loose = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node-a", "--out", tmp_path / "n")
    assert loose.returncode == 1
    assert f"chmod 600 {root / 'root.key'}" in loose.stderr
    assert_no_key_material(loose)

    os.chmod(root / "root.key", 0o600)
    (root / "root.pem").write_text((root / "root.pem").read_text()[:200])
    corrupt = ctl("ca", "issue-intermediate", "--ca", root, "--name", "node-a", "--out", tmp_path / "n")
    assert corrupt.returncode == 1
    assert str(root / "root.pem") in corrupt.stderr
    assert not (tmp_path / "n" / "intermediate.key").exists()
