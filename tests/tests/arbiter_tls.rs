//! TLS to the etcd arbiter, against a real etcd (Debian's 3.4) on 127.0.0.1 with
//! `--client-cert-auth`: a CA, a server certificate for IP 127.0.0.1 and client certificates
//! made with the `openssl` CLI in a temporary directory. The arbiter client is the library's
//! own (`hotspare::replica::arbiter::check`: one observation through the connections a
//! primary and a spare use, built from the same `ArbiterConfig`), configured through the
//! library's settings (`HOTSPARE_ARBITER_CA` … as `Config` fields).
//!
//! Needs etcd and openssl (.ci/run installs them); without them the test fails, saying so.
//! `hotspare status --etcd` is checked too when the `hotspare` binary is built.
//!
//! ```text
//! cargo test -p hotspare-tests --test arbiter_tls -- --nocapture
//! ```

#[path = "util/mod.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::Killed;

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("OPENSSL UNAVAILABLE: install openssl (.ci/run does)");
    assert!(
        o.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA `name.pem` / `name.key` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate `name.pem` / `name.key` signed by CA `ca`, with extensions `ext`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

struct TlsEtcd {
    _etcd: Killed,
    endpoint: String,
    dir: PathBuf,
}

impl TlsEtcd {
    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let d = &self.dir;
        Command::new("etcdctl")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg(format!("--cacert={}", d.join("ca.pem").display()))
            .arg(format!("--cert={}", d.join("client.pem").display()))
            .arg(format!("--key={}", d.join("client.key").display()))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl")
    }
}

/// The certificates, and one etcd serving https on 127.0.0.1 that asks for client certificates
/// signed by `ca`; waits (bounded) until it answers etcdctl over TLS.
fn start(dir: &Path) -> TlsEtcd {
    let ok = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "ETCD UNAVAILABLE: install etcd-server and etcd-client (Debian's, 3.4; .ci/run does)"
    );
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    make_cert(
        dir,
        "ca",
        "server",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        dir,
        "ca",
        "client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    // A client certificate of the wrong CA: etcd must refuse it too.
    make_cert(
        dir,
        "other-ca",
        "stranger",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let (port, peer) = (util::free_port(), util::free_port());
    let endpoint = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let etcd = Killed(
        Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .arg("--cert-file")
            .arg(dir.join("server.pem"))
            .arg("--key-file")
            .arg(dir.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting etcd"),
    );
    let e = TlsEtcd {
        _etcd: etcd,
        endpoint,
        dir: dir.to_path_buf(),
    };
    let t = Instant::now();
    while !e.etcdctl(&["endpoint", "health"]).status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "etcd (TLS) did not become healthy within 20 s; its log:\n{}",
            std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    e
}

/// The library's arbiter configuration for `endpoint` with these TLS files (`None`: unset).
fn config(
    endpoint: &str,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> hotspare::Result<Option<hotspare::replica::ArbiterConfig>> {
    hotspare::Config {
        arbiter: Some(endpoint.into()),
        service: Some("tls".into()),
        node: Some("A".into()),
        // Generous: the test machine may be busy, and no lease depends on it here.
        arbiter_timeout_ms: 3000,
        arbiter_ca: ca,
        arbiter_cert: cert,
        arbiter_key: key,
        ..hotspare::Config::default()
    }
    .arbiter()
}

#[test]
fn arbiter_client_speaks_tls_with_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let etcd = start(d);
    let record = r#"{"term":7,"holder":"A","wait_us":45000}"#;
    let put = etcd.etcdctl(&["put", "/hotspare/tls/term", record]);
    assert!(put.status.success(), "etcdctl put: {put:?}");
    let host_port = etcd.endpoint.trim_start_matches("https://").to_string();
    let f = |n: &str| Some(d.join(n));

    // (a) The right CA and a client certificate: the arbiter client reads the term record, both
    // with the https:// URL and with a bare host:port (which then gets https://).
    for ep in [etcd.endpoint.as_str(), host_port.as_str()] {
        let cfg = config(ep, f("ca.pem"), f("client.pem"), f("client.key"))
            .expect("valid configuration")
            .expect("an arbiter");
        assert_eq!(cfg.urls(), vec![etcd.endpoint.clone()]);
        let (_, rec) = hotspare::replica::arbiter::check(&cfg)
            .unwrap_or_else(|e| panic!("TLS with a client certificate failed at {ep}: {e}"))
            .expect("the term record put above");
        assert_eq!((rec.term, rec.holder.as_str()), (7, "A"));
        println!("(a) {ep}: read term {} held by {}", rec.term, rec.holder);
    }

    // (b) No client certificate: etcd refuses the connection, and the error says why.
    let cfg = config(&etcd.endpoint, f("ca.pem"), None, None)
        .unwrap()
        .unwrap();
    let e = hotspare::replica::arbiter::check(&cfg).expect_err("etcd asks for a client cert");
    println!("(b) no client certificate: {e}");
    assert!(
        e.contains("asks for a client certificate") && e.contains("none is configured"),
        "{e}"
    );

    // A client certificate etcd's CA did not sign: refused too.
    let cfg = config(
        &etcd.endpoint,
        f("ca.pem"),
        f("stranger.pem"),
        f("stranger.key"),
    )
    .unwrap()
    .unwrap();
    let e = hotspare::replica::arbiter::check(&cfg).expect_err("a stranger's certificate");
    println!("(b') client certificate of another CA: {e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // (c) The wrong CA: etcd's certificate is not trusted, one error saying so.
    let cfg = config(
        &etcd.endpoint,
        f("other-ca.pem"),
        f("client.pem"),
        f("client.key"),
    )
    .unwrap()
    .unwrap();
    let e = hotspare::replica::arbiter::check(&cfg).expect_err("etcd's certificate is untrusted");
    println!("(c) wrong CA: {e}");
    assert!(
        e.contains("server certificate is not trusted") && e.contains("other-ca.pem"),
        "{e}"
    );

    // `hotspare status --etcd` with the same settings (when the binary is built).
    let bin = util::profile_dir().join("hotspare");
    if bin.exists() {
        let o = Command::new(&bin)
            .args(["status", "--etcd", &etcd.endpoint, "--arbiter-ca"])
            .arg(d.join("ca.pem"))
            .arg("--arbiter-cert")
            .arg(d.join("client.pem"))
            .arg("--arbiter-key")
            .arg(d.join("client.key"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("term 7, held by A"), "{o:?}");
        let o = Command::new(&bin)
            .args(["status", "--etcd", &etcd.endpoint, "--arbiter-ca"])
            .arg(d.join("ca.pem"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        println!("hotspare status --etcd without a client certificate: {err}");
        assert!(
            !o.status.success() && err.contains("client certificate"),
            "{o:?}"
        );
    } else {
        println!(
            "SKIP the `hotspare status --etcd` part: {} is not built",
            bin.display()
        );
    }
}

/// The TLS settings are checked when the configuration is made: each mistake is one error
/// naming the setting, not a failure at the first etcd request.
#[test]
fn arbiter_tls_misconfigurations_are_start_up_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
    let f = |n: &str| Some(d.join(n));
    let err = |r: hotspare::Result<Option<hotspare::replica::ArbiterConfig>>| match r {
        Err(hotspare::Error::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let mut all = Vec::new();
    let m = err(config("https://127.0.0.1:1", None, None, None));
    assert!(
        m.contains("https://") && m.contains("HOTSPARE_ARBITER_CA"),
        "{m}"
    );
    all.push(m);
    let m = err(config("http://127.0.0.1:1", f("ca.pem"), None, None));
    assert!(
        m.contains("http://") && m.contains("CA is configured"),
        "{m}"
    );
    all.push(m);
    let m = err(config("127.0.0.1:1", f("missing.pem"), None, None));
    assert!(
        m.contains("missing.pem") && m.contains("HOTSPARE_ARBITER_CA"),
        "{m}"
    );
    all.push(m);
    let m = err(config("127.0.0.1:1", f("ca.pem"), f("client.pem"), None));
    assert!(m.contains("HOTSPARE_ARBITER_KEY"), "{m}");
    all.push(m);
    let m = err(config(
        "127.0.0.1:1",
        None,
        f("client.pem"),
        f("client.key"),
    ));
    assert!(m.contains("HOTSPARE_ARBITER_CA"), "{m}");
    all.push(m);
    // A key given as the CA: not a certificate.
    let m = err(config("127.0.0.1:1", f("client.key"), None, None));
    assert!(m.contains("no PEM CERTIFICATE"), "{m}");
    all.push(m);
    for m in &all {
        println!("{m}");
        assert!(!m.contains('\n'), "one line: {m}");
    }
    let cfg = config("127.0.0.1:1", None, None, None).unwrap().unwrap();
    assert_eq!(cfg.urls(), vec!["http://127.0.0.1:1".to_string()]);
}
