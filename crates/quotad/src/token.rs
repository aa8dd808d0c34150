//! `quotad token ...`: the admin API from the command line.

use crate::cli::{AdminArgs, Output, TokenCommand};
use crate::output::{CreatedJson, TokenJson, json_line, outln, print_line};
use anyhow::{Result, anyhow, bail};
use quota::pb;
use quota::pb::token_admin_client::TokenAdminClient;
use quota_edge::unanswered::{Unanswered, unanswered};
use quota_service::domain::{Balance, acts_on_a_terminal, unix_now};
use std::future::Future;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Carries out one `token` command against the admin API.
pub async fn run(admin: AdminArgs, command: TokenCommand) -> Result<()> {
    let Some(secret) = admin.admin.secret()? else {
        bail!(
            "QUOTA_ADMIN_TOKEN is not set: pass --admin-token (or QUOTA_ADMIN_TOKEN_FILE) with the secret the service runs with"
        );
    };
    let authorization = format!("Bearer {secret}")
        .parse()
        .map_err(|_| anyhow!("QUOTA_ADMIN_TOKEN holds characters that cannot be sent"))?;
    let tls = crate::tls::client(admin.ca.ca_cert.as_deref())?;
    let channel = quota_edge::tls::endpoint(&admin.server, &tls)
        .map_err(|e| anyhow!("--server {e}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach the quota service at {}: {}",
                admin.server,
                source_of(&e)
            )
        })?;
    let client = Admin {
        client: TokenAdminClient::new(channel),
        authorization,
        output: admin.output,
        server: admin.server,
    };
    client.run(command).await
}

/// What to say of a call to `url` that got no answer of the service, if
/// it did not: a peer that answered in another protocol (the REST port),
/// or, on a plain `url`, a transport that broke (a TLS port answers plain
/// HTTP/2 with bytes that break the connection: a protocol error or a
/// cancelled call, as the timing falls). `listener` names the flag.
pub(crate) fn unanswered_tip(url: &str, status: &Status, listener: &str) -> Option<String> {
    match unanswered(status)? {
        Unanswered::NotGrpc(content_type) => Some(format!(
            "{url} answered, but not as a gRPC service ({content_type}): {listener}"
        )),
        Unanswered::Transport if !url.starts_with("https://") => Some(format!(
            "{url} did not answer as a plain gRPC server ({}): if it serves TLS, use https:// (and --ca-cert)",
            status.message()
        )),
        Unanswered::Transport => None,
    }
}

struct Admin {
    client: TokenAdminClient<Channel>,
    /// `Bearer <secret>`, sent with every call.
    authorization: MetadataValue<Ascii>,
    /// Text or JSON on stdout.
    output: Output,
    /// `--server`: named when a plain `http://` call breaks, as a TLS port
    /// answers it with bytes that are not HTTP/2.
    server: String,
}

impl Admin {
    /// Calls one admin method with the credential; a refusal becomes one line.
    async fn call<Req, Resp, F>(
        &self,
        message: Req,
        method: impl FnOnce(TokenAdminClient<Channel>, Request<Req>) -> F,
    ) -> Result<Resp>
    where
        F: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let response = method(self.client.clone(), request)
            .await
            .map_err(|status| {
                let listener = "--server names the gRPC listener (--grpc-addr), not the REST one";
                match unanswered_tip(&self.server, &status, listener) {
                    Some(tip) => anyhow!("{tip}"),
                    None => failed(status),
                }
            })?;
        Ok(response.into_inner())
    }

    async fn run(self, command: TokenCommand) -> Result<()> {
        match command {
            TokenCommand::Create {
                name,
                quota,
                expires_at,
            } => {
                let expires_at = expires_at
                    .as_deref()
                    .map(parse_expiry)
                    .transpose()?
                    .unwrap_or(0);
                let request = pb::CreateTokenRequest {
                    name,
                    quota: quota.quota.unwrap_or(0),
                    unlimited: quota.unlimited,
                    expires_at,
                    quota_usd: quota.quota_usd.unwrap_or_default(),
                };
                let created = self
                    .call(request, |mut c, r| async move { c.create_token(r).await })
                    .await?;
                // The one time the key is shown: if it cannot be written,
                // the command fails (a reader gone included), naming the
                // token that holds a key no one has.
                let printed = match self.output {
                    Output::Json => print_line(json_line(&CreatedJson {
                        key: &created.key,
                        token: created.token.as_ref().map(TokenJson::from),
                    })),
                    Output::Text => print_line(&created.key),
                };
                if let Err(e) = printed {
                    let id = created.token.as_ref().map_or(0, |t| t.id);
                    bail!(
                        "token {id} was created, but its key could not be written ({e}); delete it (quotad token delete {id}) and create another"
                    );
                }
                if self.output == Output::Json {
                    return Ok(());
                }
                if let Some(token) = created.token {
                    eprintln!(
                        "created token {} ({}): {}",
                        token.id,
                        token.display_prefix,
                        describe(&token)
                    );
                }
            }
            TokenCommand::Grant { token, quota } => {
                let request = pb::GrantQuotaRequest {
                    token: Some(token_ref(&token)?),
                    quota: quota.quota.unwrap_or(0),
                    quota_usd: quota.quota_usd.unwrap_or_default(),
                };
                let token = self
                    .call(request, |mut c, r| async move { c.grant_quota(r).await })
                    .await?;
                self.print(&token)?;
            }
            TokenCommand::List => {
                let mut all = Vec::new();
                let mut page_token = String::new();
                loop {
                    let request = pb::ListTokensRequest {
                        page_size: 500,
                        page_token,
                    };
                    let page = self
                        .call(request, |mut c, r| async move { c.list_tokens(r).await })
                        .await?;
                    all.extend(page.tokens);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                match self.output {
                    Output::Json => {
                        let tokens: Vec<TokenJson> = all.iter().map(TokenJson::from).collect();
                        outln!("{}", json_line(&tokens));
                    }
                    Output::Text => {
                        outln!(
                            "{:>6}  {:<10}  {:<8}  {:>9}  {:>15}  {:>15}  {:>15}  {:<20}  NAME",
                            "ID",
                            "PREFIX",
                            "STATUS",
                            "UNLIMITED",
                            "REMAINING",
                            "USED",
                            "HELD",
                            "EXPIRES"
                        );
                        let now = unix_now();
                        for t in &all {
                            let expires = match expiry(t, now) {
                                Expiry::Never => "never".to_owned(),
                                Expiry::Past(_) => "expired".to_owned(),
                                Expiry::At(at) => rfc3339(at),
                            };
                            outln!(
                                "{:>6}  {:<10}  {:<8}  {:>9}  {:>15}  {:>15}  {:>15}  {:<20}  {}",
                                t.id,
                                t.display_prefix,
                                if t.enabled { "enabled" } else { "disabled" },
                                if t.unlimited { "yes" } else { "no" },
                                t.remaining,
                                t.used,
                                t.held,
                                expires,
                                printable(&t.name)
                            );
                        }
                    }
                }
            }
            TokenCommand::Show { token } => {
                let request = pb::GetTokenRequest {
                    token: Some(token_ref(&token)?),
                };
                let token = self
                    .call(request, |mut c, r| async move { c.get_token(r).await })
                    .await?;
                self.print(&token)?;
            }
            TokenCommand::Disable { token } => self.set_enabled(&token, false).await?,
            TokenCommand::Enable { token } => self.set_enabled(&token, true).await?,
            TokenCommand::Delete { token } => {
                let request = pb::DeleteTokenRequest {
                    token: Some(token_ref(&token)?),
                };
                self.call(request, |mut c, r| async move { c.delete_token(r).await })
                    .await?;
                match self.output {
                    Output::Json => {
                        outln!("{}", json_line(&serde_json::json!({"deleted": true})))
                    }
                    Output::Text => eprintln!("deleted"),
                }
            }
        }
        Ok(())
    }

    async fn set_enabled(&self, token: &str, enabled: bool) -> Result<()> {
        let request = pb::UpdateTokenRequest {
            token: Some(token_ref(token)?),
            enabled: Some(enabled),
            ..Default::default()
        };
        let token = self
            .call(request, |mut c, r| async move { c.update_token(r).await })
            .await?;
        self.print(&token)?;
        Ok(())
    }

    /// One token on stdout, as `--output` says.
    fn print(&self, token: &pb::Token) -> Result<()> {
        match self.output {
            Output::Text => outln!("{}", show(token)),
            Output::Json => outln!("{}", json_line(&TokenJson::from(token))),
        }
        Ok(())
    }
}

/// A numeric argument is an id, one that starts with `sk-` a key (the
/// service checks its form); anything else, a name say, is neither.
fn token_ref(arg: &str) -> Result<pb::TokenRef> {
    let r = match arg.parse::<i64>() {
        Ok(id) => pb::token_ref::Ref::Id(id),
        Err(_) if arg.starts_with("sk-") => pb::token_ref::Ref::Key(arg.to_owned()),
        Err(_) => bail!("{arg:?} is neither a key (sk-...) nor a numeric id"),
    };
    Ok(pb::TokenRef { r#ref: Some(r) })
}

/// The last second an expiry may name: 9999-12-31T23:59:59Z, as far as an
/// RFC 3339 time reaches.
const LAST_EXPIRY: i64 = 253_402_300_799;

/// `--expires-at`: unix seconds (0: never, as the API has it), or an RFC
/// 3339 time, which is a moment, so never 0.
fn parse_expiry(value: &str) -> Result<i64> {
    let (unix, first) = match value.parse::<i64>() {
        Ok(unix) => (unix, 0),
        Err(_) => chrono::DateTime::parse_from_rfc3339(value)
            .map(|t| (t.timestamp(), 1))
            .map_err(|_| anyhow!("--expires-at {value:?} is neither unix seconds nor an RFC 3339 time (2027-01-01T00:00:00Z)"))?,
    };
    if !(first..=LAST_EXPIRY).contains(&unix) {
        bail!(
            "--expires-at {value:?} is out of range: after 1970-01-01T00:00:00Z, up to the end of 9999 ({LAST_EXPIRY} in unix seconds; 0 is never)"
        );
    }
    Ok(unix)
}

/// When a token expires, as every text output tells it.
enum Expiry {
    Never,
    /// Already past: the key is refused everywhere.
    Past(i64),
    At(i64),
}

fn expiry(t: &pb::Token, now: i64) -> Expiry {
    match t.expires_at {
        0 => Expiry::Never,
        past if past <= now => Expiry::Past(past),
        at => Expiry::At(at),
    }
}

/// A name as text output shows it: what a terminal would act on rather
/// than show (a name stored before the service refused such characters)
/// escaped.
fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(acts_on_a_terminal) {
        return name.into();
    }
    name.chars()
        .map(|c| {
            if acts_on_a_terminal(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Unix seconds as an RFC 3339 time in UTC (`2027-01-01T00:00:00Z`).
fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn describe(t: &pb::Token) -> String {
    let quota = if t.unlimited {
        "unlimited".to_owned()
    } else {
        let balance = Balance {
            remaining: t.remaining,
            used: t.used,
            unlimited: t.unlimited,
        };
        format!("{} units", balance.limit_units())
    };
    let expiry = match expiry(t, unix_now()) {
        Expiry::Never => "never expires".to_owned(),
        // Not refused (a key may be made to be refused), but said plainly.
        Expiry::Past(past) => format!(
            "expired at {} (already past: the key is refused everywhere)",
            rfc3339(past)
        ),
        Expiry::At(at) => format!("expires at {}", rfc3339(at)),
    };
    format!("{quota}, {expiry}")
}

fn show(t: &pb::Token) -> String {
    let balance = Balance {
        remaining: t.remaining,
        used: t.used,
        unlimited: t.unlimited,
    };
    // Unix seconds, as JSON has them, then the time for people; 0 is no
    // expiry (JSON's null).
    let expires_at = match expiry(t, unix_now()) {
        Expiry::Never => "never".to_owned(),
        Expiry::Past(past) => format!(
            "{past} ({}, past: the key is refused everywhere)",
            rfc3339(past)
        ),
        Expiry::At(at) => format!("{at} ({})", rfc3339(at)),
    };
    format!(
        "id: {}\nprefix: {}\nname: {}\nstatus: {}\nunlimited: {}\nremaining: {}\nused: {}\nheld: {}\nlimit: {}\nexpires_at: {expires_at}\ncreated_at: {} ({})\nupdated_at: {} ({})",
        t.id,
        t.display_prefix,
        printable(&t.name),
        if t.enabled { "enabled" } else { "disabled" },
        t.unlimited,
        t.remaining,
        t.used,
        t.held,
        balance.limit_units(),
        t.created_at,
        rfc3339(t.created_at),
        t.updated_at,
        rfc3339(t.updated_at)
    )
}

/// A refused call as one line: the code, in words (`not found`, `invalid
/// argument`), and the service's message.
fn failed(status: Status) -> anyhow::Error {
    let code = quota_telemetry::metrics::code_name(status.code())
        .to_lowercase()
        .replace('_', " ");
    anyhow!("{code}: {}", status.message())
}

fn source_of(err: &dyn std::error::Error) -> String {
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_unix_seconds_or_rfc3339() {
        assert_eq!(parse_expiry("1900000000").unwrap(), 1_900_000_000);
        assert_eq!(parse_expiry("2027-01-01T00:00:00Z").unwrap(), 1_798_761_600);
        assert!(parse_expiry("next year").is_err());
    }

    #[test]
    fn numeric_arguments_are_ids_and_keys_start_with_sk() {
        assert_eq!(
            token_ref("42").unwrap().r#ref,
            Some(pb::token_ref::Ref::Id(42))
        );
        assert_eq!(
            token_ref("sk-abc").unwrap().r#ref,
            Some(pb::token_ref::Ref::Key("sk-abc".into()))
        );
        let name = token_ref("alice").unwrap_err().to_string();
        assert_eq!(
            name,
            r#""alice" is neither a key (sk-...) nor a numeric id"#
        );
    }

    #[test]
    fn a_name_is_printed_with_what_a_terminal_would_act_on_escaped() {
        assert!(matches!(
            printable("alice, bot #2 ✓"),
            std::borrow::Cow::Borrowed("alice, bot #2 ✓")
        ));
        assert_eq!(
            printable("evil\u{1b}[31m\nred\u{202e}txt"),
            "evil\\u{1b}[31m\\u{a}red\\u{202e}txt"
        );
    }
}
