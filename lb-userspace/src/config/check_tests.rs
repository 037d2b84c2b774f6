//! The https and grpc health checks' configuration: what parses, and the errors.

use super::tests::{check, checked};
use super::*;

#[test]
fn https_and_grpc_checks_parse() {
    let pem = std::env::temp_dir().join(format!("xlb-ca-{}.pem", std::process::id()));
    // A certificate's PEM framing with DER inside is all the reader checks here.
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n").unwrap();
    let config = check(&checked(&format!(
        "    health_check:\n      type: https\n      http_version: 2\n      expect_status: [200, 300-399]\n      headers: {{ X-Check: xlb, Authorization: \"Bearer t\" }}\n      tls: {{ sni: api.example.com, ca_file: {} }}\n",
        pem.display()
    )))
    .unwrap();
    let CheckKind::Http(http) = &config.vips[0].health_check.as_ref().unwrap().kind else { panic!("https") };
    assert!(http.http2);
    assert_eq!(http.expect_status, vec![(200, 200), (300, 399)]);
    assert_eq!(http.headers, vec![("Authorization".into(), "Bearer t".into()), ("X-Check".into(), "xlb".into())]);
    let tls = http.tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("api.example.com"));
    assert!(matches!(&tls.roots, TlsRoots::File { certificates, .. } if certificates == &vec![vec![0x30, 3, 2, 1, 0]]));
    let config = check(&checked("    health_check: { type: https, expect_status: \"200-204\" }\n")).unwrap();
    let CheckKind::Http(http) = &config.vips[0].health_check.as_ref().unwrap().kind else { panic!("https") };
    assert_eq!((http.tls.as_ref().unwrap().roots.clone(), &http.expect_status), (TlsRoots::System, &vec![(200, 204)]));
    let config = check(&checked(
        "    health_check: { type: grpc, service: app.v1.Users, tls: { insecure_skip_verify: true } }\n",
    ))
    .unwrap();
    let CheckKind::Grpc(grpc) = &config.vips[0].health_check.as_ref().unwrap().kind else { panic!("grpc") };
    assert_eq!((grpc.port, grpc.service.as_str()), (80, "app.v1.Users"));
    assert_eq!(grpc.tls.as_ref().unwrap().roots, TlsRoots::Insecure);
    for (check_text, field, words) in [
        ("{ type: http, expect_status: 700 }", "expect_status", "use codes 100 to 599"),
        ("{ type: http, expect_status: 399-200 }", "expect_status", "backwards"),
        ("{ type: http, expect_status: [] }", "expect_status", "empty list"),
        ("{ type: http, tls: { sni: a } }", "tls", "only https and grpc checks"),
        ("{ type: https, tls: { ca_file: /nonexistent.pem } }", "tls.ca_file", "cannot read `/nonexistent.pem`"),
        (
            "{ type: https, tls: { ca_file: /etc/hostname, insecure_skip_verify: true } }",
            "tls.insecure_skip_verify",
            "one or the other",
        ),
        ("{ type: http, headers: { \"bad name\": x } }", "headers", "not a header name"),
        ("{ type: http, headers: { Host: x } }", "headers", "use `host:`"),
        ("{ type: http, http_version: 3 }", "http_version", "not 1.1 or 2"),
        ("{ type: tcp, service: x }", "service", "only grpc checks"),
        ("{ type: http, method: DELETE }", "method", "not one of GET"),
    ] {
        let e = check(&checked(&format!("    health_check: {check_text}\n"))).unwrap_err().to_string();
        assert!(e.contains(&format!("health_check.{field}")) && e.contains(words), "{check_text}: {e}");
    }
    let _ = std::fs::remove_file(&pem);
}
