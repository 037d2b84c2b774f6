//! The HTTP, HTTPS and gRPC probes against real servers on loopback: hyper (HTTP/1.1 and h2,
//! with TLS from a certificate openssl makes for the test) and Python's grpcio (Debian's
//! python3-grpcio) serving `grpc.health.v1.Health/Check`.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::tests::http_check;
use super::{ProbeError, http::serving_status, probe};
use crate::config::{CheckKind, GrpcCheck, HttpCheck, TlsCheck, TlsRoots, read_certificates};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const T: Duration = Duration::from_secs(2);

/// What the test server saw of each request: version, method, path and headers.
type Seen = Arc<Mutex<Vec<String>>>;

/// A hyper server (HTTP/1.1 and h2, TLS when given) answering `/status/N` with status N and
/// "healthy body" otherwise 200.
async fn server(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Seen) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tls, log) = (tls.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let headers: Vec<String> =
                        request.headers().iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or(""))).collect();
                    log.lock().unwrap().push(format!(
                        "{:?} {} {} {}",
                        request.version(),
                        request.method(),
                        request.uri().path(),
                        headers.join(" ")
                    ));
                    let status =
                        request.uri().path().strip_prefix("/status/").and_then(|s| s.parse().ok()).unwrap_or(200);
                    let mut response = Response::new(Full::new(Bytes::from_static(b"a healthy body")));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (openssl), and a TLS acceptor that
/// offers h2 and http/1.1.
fn certificate(dir: &std::path::Path) -> (PathBuf, tokio_rustls::TlsAcceptor) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // An end-entity certificate that is its own trust anchor (a CA one is refused as a leaf).
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = vec![CertificateDer::from_pem_file(&cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (cert, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(http: HttpCheck) -> CheckKind {
    CheckKind::Http(Box::new(http))
}

#[tokio::test]
async fn status_sets_headers_and_h2_in_cleartext() {
    let (port, seen) = server(None).await;
    let base = HttpCheck { path: "/status/204".into(), ..http_check(port) };
    let err = probe(LOCALHOST, &check(base.clone()), T).await.unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 204, expected 200");
    let ranges = HttpCheck { expect_status: vec![(200, 200), (204, 299)], ..base.clone() };
    assert_eq!(probe(LOCALHOST, &check(ranges.clone()), T).await, Ok(()));
    let err = probe(LOCALHOST, &check(HttpCheck { path: "/status/503".into(), ..ranges }), T).await.unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 503, expected 200, 204-299");

    let h2 = HttpCheck {
        http2: true,
        path: "/ready".into(),
        host: Some("svc.example".into()),
        headers: vec![("X-Check".into(), "xlb".into())],
        expect_body: Some("healthy".into()),
        ..http_check(port)
    };
    assert_eq!(probe(LOCALHOST, &check(h2.clone()), T).await, Ok(()));
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert!(last.starts_with("HTTP/2.0 GET /ready") && last.contains("x-check=xlb"), "{last}");
    let err = probe(LOCALHOST, &check(HttpCheck { expect_body: Some("sick".into()), ..h2 }), T).await.unwrap_err();
    assert_eq!(err, ProbeError::Body { expected: "sick".into() });
    let first = seen.lock().unwrap()[0].clone();
    assert!(first.starts_with("HTTP/1.1 GET /status/204") && first.contains("user-agent=xlb-health-check"), "{first}");
}

#[tokio::test]
async fn https_checks_the_certificate_by_its_roots_and_name() {
    let dir = temp_dir("https-check");
    let (cert, acceptor) = certificate(&dir);
    let (port, seen) = server(Some(acceptor)).await;
    let file = TlsRoots::File {
        path: cert.display().to_string(),
        certificates: read_certificates(&cert.display().to_string()).unwrap(),
    };
    let https = |sni: Option<&str>, roots: TlsRoots, http2: bool| {
        check(HttpCheck { http2, tls: Some(TlsCheck { sni: sni.map(Into::into), roots }), ..http_check(port) })
    };
    // The CA file trusts it, for its name and its address (SAN).
    assert_eq!(probe(LOCALHOST, &https(Some("localhost"), file.clone(), false), T).await, Ok(()));
    assert_eq!(probe(LOCALHOST, &https(None, file.clone(), true), T).await, Ok(()));
    assert!(seen.lock().unwrap().last().unwrap().starts_with("HTTP/2.0 GET /healthz"), "h2 by ALPN");
    // Another name, or the system's roots: refused, and said so.
    let err = probe(LOCALHOST, &https(Some("other.example"), file, false), T).await.unwrap_err();
    assert!(err.to_string().starts_with("TLS handshake: the server's certificate is not trusted"), "{err}");
    let err = probe(LOCALHOST, &https(Some("localhost"), TlsRoots::System, false), T).await.unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");
    assert!(!err.is_local(), "the backend's certificate is the backend's fault");
    // insecure_skip_verify: any certificate.
    assert_eq!(probe(LOCALHOST, &https(Some("other.example"), TlsRoots::Insecure, false), T).await, Ok(()));
    // A plain HTTP probe of a TLS port fails as a bad response, not a hang.
    let err = probe(LOCALHOST, &check(http_check(port)), T).await.unwrap_err();
    assert!(matches!(err, ProbeError::BadResponse(_) | ProbeError::HttpTimeout(_)), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn grpc_replies_are_read_in_bounds() {
    // A HealthCheckResponse { status: SERVING }, framed.
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
    assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0), "no field: UNKNOWN");
    // Unknown fields are skipped: a string (field 2) and a fixed64 (field 3) before the status.
    assert_eq!(serving_status(&[0, 0, 0, 0, 15, 0x12, 2, b'h', b'i', 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 2]), Some(2));
    for bad in [
        &[][..],
        &[1, 0, 0, 0, 2, 0x08, 0x01][..],       // compressed
        &[0, 0, 0, 0, 9, 0x08, 0x01][..],       // longer than what came
        &[0, 0, 0, 0, 2, 0x08, 0x80][..],       // a varint cut short
        &[0, 0, 0, 0, 2, 0x12, 0x05][..],       // a string past the end
        &[0, 0, 0, 0, 1, 0x0f][..],             // wire type 7
        &[0, 0xff, 0xff, 0xff, 0xff, 0x08][..], // a huge length
    ] {
        assert_eq!(serving_status(bad), None, "{bad:?}");
    }
    assert_eq!(super::http::grpc_request(""), vec![0, 0, 0, 0, 0]);
    assert_eq!(super::http::grpc_request("ab"), vec![0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
}

/// Debian's python3 with grpcio, serving the health service: "" and "app" SERVING, "down"
/// NOT_SERVING, anything else NOT_FOUND. `None` without grpcio (a failure under CI).
fn grpc_server() -> Option<(Child, u16)> {
    const SERVER: &str = r#"
import sys, grpc
from concurrent import futures
def check(request, context):
    # HealthCheckRequest: field 1 (service), a string.
    service = request[2:].decode() if request[:1] == b"\x0a" else ""
    if service in ("", "app"):
        return b"\x08\x01"
    if service == "down":
        return b"\x08\x02"
    context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
    "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=None, response_serializer=None)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
"#;
    let available = Command::new("/usr/bin/python3").args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-grpcio is missing and CI is set: scripts/setup.sh installs it, so a skip here is a failure"
        );
        eprintln!("SKIPPED the gRPC server tests: /usr/bin/python3 has no grpc module (apt install python3-grpcio)");
        return None;
    }
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    Some((child, line.trim().parse().expect("the server's port")))
}

#[tokio::test]
async fn grpc_health_against_a_real_grpc_server() {
    let Some((mut child, port)) = grpc_server() else { return };
    let grpc = |service: &str| CheckKind::Grpc(Box::new(GrpcCheck { port, service: service.into(), tls: None }));
    assert_eq!(probe(LOCALHOST, &grpc(""), T).await, Ok(()));
    assert_eq!(probe(LOCALHOST, &grpc("app"), T).await, Ok(()));
    let err = probe(LOCALHOST, &grpc("down"), T).await.unwrap_err();
    assert_eq!(err.to_string(), "bad HTTP response: service status NOT_SERVING (not SERVING)");
    let err = probe(LOCALHOST, &grpc("other"), T).await.unwrap_err();
    assert!(err.to_string().contains("grpc-status 5 (NOT_FOUND"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
    let err = probe(LOCALHOST, &grpc(""), T).await.unwrap_err();
    assert_eq!(err.to_string(), "connect: connection refused");
    // An HTTP server that is not gRPC: not healthy.
    let (http_port, _) = server(None).await;
    let not_grpc = CheckKind::Grpc(Box::new(GrpcCheck { port: http_port, service: String::new(), tls: None }));
    assert!(probe(LOCALHOST, &not_grpc, T).await.is_err());
}
