//! TLS as an operator runs it: `quotad serve --tls-cert --tls-key` with a
//! certificate of a private CA made here, `quotad token ...` over `https://`
//! with `--ca-cert`, a gRPC client trusting that CA, and a client given the
//! wrong CA refused in one clear line.

use crate::helpers::*;
use crate::pki::make_pki;
use quota::pb::ConsumeRequest;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_edge::ClientTls;

/// The files of a private CA, a server certificate it signed, and another
/// CA that signed nothing of this server.
struct Files {
    ca: String,
    wrong_ca: String,
    cert: String,
    key: String,
}

fn write_pki(dir: &TempDir) -> Files {
    let pki = make_pki();
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    Files {
        ca: file("ca.pem", &pki.ca),
        wrong_ca: file("wrong-ca.pem", &make_pki().ca),
        cert: file("cert.pem", &pki.cert),
        key: file("key.pem", &pki.key),
    }
}

fn serve_tls(dir: &TempDir, files: &Files) -> Server {
    let tls = [
        "--tls-cert",
        files.cert.as_str(),
        "--tls-key",
        files.key.as_str(),
    ];
    let database = dir.sqlite_url("quota.db");
    let mut server = Server::serve(quotad(), &database, &tls, dir.path());
    server.grpc_url = server.grpc_url.replace("http://", "https://");
    server
}

/// `quotad token ARGS --server URL --ca-cert CA`.
fn token(server: &Server, ca: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = quotad();
    cmd.arg("token")
        .args(args)
        .args(["--server", &server.grpc_url, "--ca-cert", ca]);
    run(cmd, COMMAND_TIMEOUT)
}

#[test]
fn the_cli_and_grpc_clients_reach_a_tls_server_trusting_its_ca() {
    let dir = TempDir::new();
    let files = write_pki(&dir);
    let server = serve_tls(&dir, &files);
    assert!(
        server.log.lock().unwrap().contains(" (TLS)"),
        "the gRPC listener is not announced as TLS"
    );

    // The CLI over https://, trusting the CA that signed the certificate.
    let (key, id) = created_key(&token(&server, &files.ca, &["create", "--quota", "1000"]));
    let shown = token(&server, &files.ca, &["show", &id.to_string()]);
    succeeded(&shown);
    assert!(
        has_line(&stdout_of(&shown), "remaining: 1000"),
        "{}",
        describe(&shown)
    );

    // A gRPC client over TLS: a debit, answered exactly.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let debit = runtime.block_on(async {
        let tls = ClientTls::with_ca_pem(std::fs::read(&files.ca).unwrap().as_slice()).unwrap();
        let channel = quota_edge::tls::endpoint(&server.grpc_url, &tls)
            .unwrap()
            .connect()
            .await
            .expect("a TLS connection to quotad serve");
        let mut request = tonic::Request::new(ConsumeRequest {
            token: key.clone(),
            quota: 250,
            request_id: "over-tls".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        QuotaServiceClient::new(channel).consume(request).await
    });
    let debit = debit.expect("Consume over TLS").into_inner();
    assert_eq!(
        (debit.remaining, debit.used, debit.repeat),
        (750, 250, false)
    );

    // The same CLI given a CA that did not sign the certificate (another
    // CA of the same name, so the signature is what fails): refused in one
    // line that says what failed, with nothing done.
    let refused = token(&server, &files.wrong_ca, &["list"]);
    let line = failed_with_one_line(&refused);
    let expected = format!(
        "quotad: cannot reach the quota service at {}: invalid peer certificate: BadSignature",
        server.grpc_url
    );
    assert_eq!(line, expected, "{}", describe(&refused));
    assert_eq!(
        stderr_of(&refused).lines().count(),
        1,
        "{}",
        describe(&refused)
    );
    assert!(stdout_of(&refused).is_empty(), "{}", describe(&refused));

    // Plain http:// to the TLS port is refused too, in one line.
    let plain = server.grpc_url.replace("https://", "http://");
    let mut cmd = quotad();
    cmd.args(["token", "list", "--server", &plain]);
    let refused = run(cmd, COMMAND_TIMEOUT);
    let line = failed_with_one_line(&refused);
    assert!(
        line.starts_with(&format!(
            "quotad: {plain} did not answer as a plain gRPC server"
        )) && line.ends_with("if it serves TLS, use https:// (and --ca-cert)"),
        "{line}"
    );

    let shown = token(&server, &files.ca, &["show", &key]);
    assert!(
        has_line(&stdout_of(&shown), "used: 250"),
        "{}",
        describe(&shown)
    );
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}

/// `quotad health ARGS`.
fn health(args: &[&str]) -> std::process::Output {
    let mut cmd = quotad();
    cmd.arg("health").args(args);
    run(cmd, COMMAND_TIMEOUT)
}

#[test]
fn health_checks_a_tls_server_trusting_its_ca() {
    let dir = TempDir::new();
    let files = write_pki(&dir);
    let server = serve_tls(&dir, &files);
    let readyz = format!("https://{}/readyz", server.http.unwrap());
    for host in ["127.0.0.1", "localhost"] {
        let grpc = server.grpc_url.replace("127.0.0.1", host);
        let http = readyz.replace("127.0.0.1", host);
        for target in [["--grpc", grpc.as_str()], ["--http", http.as_str()]] {
            let ready = health(&[target[0], target[1], "--ca-cert", &files.ca]);
            succeeded(&ready);
        }
    }

    // Another CA, or plain text to the TLS ports: not ready, in one line.
    for target in [
        ["--grpc", server.grpc_url.as_str()],
        ["--http", readyz.as_str()],
    ] {
        let refused = health(&[target[0], target[1], "--ca-cert", &files.wrong_ca]);
        let line = failed_with_one_line(&refused);
        assert!(line.starts_with("quotad: not ready: "), "{line}");
        assert!(line.contains("BadSignature"), "{line}");
    }
    let plain = readyz.replace("https://", "http://");
    failed_with_one_line(&health(&["--http", &plain]));
    // Plain gRPC to the TLS port: the tip, as `token` commands give it.
    let plain = server.grpc_url.replace("https://", "http://");
    let line = failed_with_one_line(&health(&["--grpc", &plain]));
    assert!(line.contains("if it serves TLS, use https://"), "{line}");

    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}

#[test]
fn tls_files_can_come_from_the_environment() {
    let dir = TempDir::new();
    let files = write_pki(&dir);
    let mut cmd = quotad();
    cmd.env("QUOTA_TLS_CERT", &files.cert)
        .env("QUOTA_TLS_KEY", &files.key);
    let mut server = Server::serve(cmd, &dir.sqlite_url("quota.db"), &[], dir.path());
    server.grpc_url = server.grpc_url.replace("http://", "https://");
    assert!(server.log.lock().unwrap().contains(" (TLS)"));
    let mut cmd = quotad();
    cmd.args(["token", "list", "--server", &server.grpc_url])
        .env("QUOTA_CA_CERT", &files.ca);
    succeeded(&run(cmd, COMMAND_TIMEOUT));
    let (status, log) = server.stop_with("TERM");
    assert!(status.success(), "{status}\n{log}");
}
