//! HTTP, HTTPS and gRPC probes on hyper's client connection API: one connection per probe
//! (a pooled connection would hide a listener that died), HTTP/1.1 or h2, TLS by rustls.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{MAX_BODY, ProbeError, contains, describe};
use crate::config::{GrpcCheck, HttpCheck, TlsCheck, TlsRoots};

/// Where the system's CA bundle is (Debian's ca-certificates).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most bytes of a gRPC reply read.
const MAX_GRPC_REPLY: usize = 4096;

/// An `HttpCheck` probe over `stream` (connected to `target`).
pub(super) async fn probe_http(stream: TcpStream, target: SocketAddr, check: &HttpCheck) -> Result<(), ProbeError> {
    let host = check.host.clone().unwrap_or_else(|| super::host_header(target));
    let mut request = Request::builder()
        .method(check.method.as_str())
        .uri(check.path.as_str())
        .header(header::USER_AGENT, "xlb-health-check")
        .header(header::ACCEPT, "*/*");
    if !check.http2 {
        request = request.header(header::HOST, host.as_str());
    } else {
        // h2 carries the host as :authority.
        let scheme = if check.tls.is_some() { "https" } else { "http" };
        request = request.uri(format!("{scheme}://{host}{}", check.path));
    }
    for (name, value) in &check.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| ProbeError::BadResponse(format!("building the request: {e}")))?;
    let sni = check.tls.as_ref().map(|tls| tls.sni.clone().or_else(|| check.host.clone()));
    let response = match &check.tls {
        None => send(stream, check.http2, request).await?,
        Some(tls) => {
            let stream = handshake(stream, target, tls, sni.flatten(), check.http2).await?;
            send(stream, check.http2, request).await?
        }
    };
    let status = response.status().as_u16();
    if !check.expect_status.iter().any(|(low, high)| (*low..=*high).contains(&status)) {
        return Err(ProbeError::Status { got: status, expected: describe_statuses(&check.expect_status) });
    }
    let Some(expected) = &check.expect_body else { return Ok(()) };
    let body = read_bounded(response.into_body(), MAX_BODY).await?;
    if contains(&body, expected.as_bytes()) { Ok(()) } else { Err(ProbeError::Body { expected: expected.clone() }) }
}

/// A `grpc.health.v1.Health/Check` probe: SERVING is healthy.
pub(super) async fn probe_grpc(stream: TcpStream, target: SocketAddr, check: &GrpcCheck) -> Result<(), ProbeError> {
    let scheme = if check.tls.is_some() { "https" } else { "http" };
    let request = Request::post(format!("{scheme}://{}/grpc.health.v1.Health/Check", super::host_header(target)))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "xlb-health-check")
        .body(Full::new(Bytes::from(grpc_request(&check.service))))
        .map_err(|e| ProbeError::BadResponse(format!("building the request: {e}")))?;
    let response = match &check.tls {
        None => send(stream, true, request).await?,
        Some(tls) => send(handshake(stream, target, tls, tls.sni.clone(), true).await?, true, request).await?,
    };
    if response.status() != http::StatusCode::OK {
        return Err(ProbeError::BadResponse(format!("gRPC over HTTP status {}", response.status().as_u16())));
    }
    // A trailers-only reply carries grpc-status in its headers.
    let mut grpc_status = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    let mut reply = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProbeError::BadResponse(format!("reading the reply: {}", hyper_error(&e))))?;
        if let Some(data) = frame.data_ref() {
            if reply.len() + data.len() > MAX_GRPC_REPLY {
                return Err(ProbeError::BadResponse("a gRPC health reply longer than 4 KiB".to_owned()));
            }
            reply.extend_from_slice(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            grpc_status = trailers.get("grpc-status").cloned().or(grpc_status);
        }
    }
    match grpc_status.as_ref().map(HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(code) => {
            let code = String::from_utf8_lossy(code).into_owned();
            let meaning = match code.as_str() {
                "5" => " (NOT_FOUND: the server does not know this service)",
                "12" => " (UNIMPLEMENTED: no health service)",
                "14" => " (UNAVAILABLE)",
                _ => "",
            };
            return Err(ProbeError::BadResponse(format!("grpc-status {code}{meaning}")));
        }
        None => return Err(ProbeError::BadResponse("no grpc-status in the reply".to_owned())),
    }
    match serving_status(&reply) {
        Some(1) => Ok(()),
        Some(status) => Err(ProbeError::BadResponse(format!("service status {} (not SERVING)", status_name(status)))),
        None => Err(ProbeError::BadResponse("not a HealthCheckResponse".to_owned())),
    }
}

/// A length-prefixed `HealthCheckRequest { service }` (field 1, a string).
pub(crate) fn grpc_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 4);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8]; // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The `status` (field 1, an enum) of a length-prefixed `HealthCheckResponse`; unknown fields
/// are skipped, an absent status is UNKNOWN (0). `None` for anything malformed.
pub(crate) fn serving_status(reply: &[u8]) -> Option<u64> {
    let (&compressed, rest) = reply.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut message = rest.get(4..4usize.checked_add(len)?)?;
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut message)?,
            (_, 0) => {
                read_varint(&mut message)?;
            }
            (_, 2) => {
                let n = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(n..)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unexpected",
    }
}

fn describe_statuses(ranges: &[(u16, u16)]) -> String {
    let items: Vec<String> =
        ranges.iter().map(|(l, h)| if l == h { l.to_string() } else { format!("{l}-{h}") }).collect();
    items.join(", ")
}

/// hyper's error with its source (hyper's own text says only "connection error").
fn hyper_error(e: &(dyn std::error::Error + 'static)) -> String {
    match e.source() {
        Some(source) => match source.downcast_ref::<std::io::Error>() {
            Some(io) => format!("{e}: {}", describe(io)),
            None => format!("{e}: {source}"),
        },
        None => e.to_string(),
    }
}

async fn send<S>(stream: S, http2: bool, request: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let failed = |e: hyper::Error| ProbeError::BadResponse(hyper_error(&e));
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(failed)?;
        // Driven beside the request; it ends when the probe drops the sender.
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(failed)
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(failed)?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(failed)
    }
}

/// At most `max` bytes of a body: enough to search, bounded whatever the server sends.
async fn read_bounded(mut body: Incoming, max: usize) -> Result<Vec<u8>, ProbeError> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(frame) = body.frame().await else { break };
        let frame = frame.map_err(|e| ProbeError::BadResponse(format!("reading the body: {}", hyper_error(&e))))?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(&data[..data.len().min(max - out.len())]);
        }
    }
    Ok(out)
}

async fn handshake(
    stream: TcpStream,
    target: SocketAddr,
    tls: &TlsCheck,
    sni: Option<String>,
    http2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let config = shared_config(&tls.roots, http2)?;
    let name = match sni {
        Some(name) => ServerName::try_from(name).map_err(|e| ProbeError::BadResponse(format!("TLS name: {e}")))?,
        None => ServerName::IpAddress(target.ip().into()),
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| ProbeError::Io { op: "TLS handshake", message: tls_error(&e) })
}

/// The TLS error in words an operator reads (rustls' own, without the io wrapping).
fn tls_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => format!("the server's certificate is not trusted: {why:?}"),
        Some(other) => other.to_string(),
        None => describe(e),
    }
}

/// The client configuration of `roots` and ALPN, built once and shared by every probe that uses
/// them (building one parses every root certificate). Resumption is off, so that each probe
/// checks the server's certificate afresh. At most `MAX_CONFIGS` are kept: past that (roots
/// changed by many reloads) the cache starts over.
fn shared_config(roots: &TlsRoots, http2: bool) -> Result<Arc<ClientConfig>, ProbeError> {
    type Cache = std::collections::HashMap<u64, (TlsRoots, bool, Arc<ClientConfig>)>;
    const MAX_CONFIGS: usize = 64;
    static CONFIGS: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let key = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (roots, http2).hash(&mut hasher);
        hasher.finish()
    };
    let lock = || CONFIGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((r, h, config)) = lock().get_or_insert_with(Cache::new).get(&key)
        && r == roots
        && *h == http2
    {
        return Ok(Arc::clone(config));
    }
    let mut config = client_config(roots)?;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let mut cache = lock();
    let cache = cache.get_or_insert_with(Cache::new);
    if cache.len() >= MAX_CONFIGS {
        cache.clear();
    }
    cache.insert(key, (roots.clone(), http2, Arc::clone(&config)));
    Ok(config)
}

fn client_config(roots: &TlsRoots) -> Result<ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Local { op: "TLS setup", message: e.to_string() })?;
    let local = |message: String| ProbeError::Local { op: "TLS setup", message };
    let store = |certificates: &mut dyn Iterator<Item = CertificateDer<'static>>| {
        let mut store = RootCertStore::empty();
        for certificate in certificates {
            let _ = store.add(certificate);
        }
        store
    };
    let config = match roots {
        TlsRoots::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        TlsRoots::File { certificates, .. } => builder
            .with_root_certificates(store(&mut certificates.iter().map(|c| CertificateDer::from(c.clone()))))
            .with_no_client_auth(),
        TlsRoots::System => {
            // Read once: the bundle has ~150 certificates, and probes run every few seconds.
            static SYSTEM: std::sync::OnceLock<Result<Vec<Vec<u8>>, String>> = std::sync::OnceLock::new();
            let certificates =
                SYSTEM.get_or_init(|| crate::config::read_certificates(SYSTEM_BUNDLE)).clone().map_err(local)?;
            builder
                .with_root_certificates(store(&mut certificates.into_iter().map(CertificateDer::from)))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// `insecure_skip_verify`: any certificate, signatures still checked for the handshake's sake.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
