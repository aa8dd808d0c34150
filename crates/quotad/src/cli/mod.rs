//! The command line. Every flag also reads an environment variable.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use quota_service::domain::DEFAULT_QUOTA_PER_USD;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// quota: how much may each API key spend, and how much has it spent.
///
/// Serves the quota gRPC API (quota.v1) and the OpenAI-style REST billing
/// routes, and manages keys through the admin API.
#[derive(Debug, Parser)]
#[command(name = "quotad", version, propagate_version = true, mut_subcommands = negative_numbers)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr: `text` for people, `json` (one object per line,
    /// span fields included) for log shippers. Which lines: the variable
    /// QUOTA_LOG, a tracing filter (`debug`, `info,quota_edge=warn`; default
    /// `info,sea_orm_migration=warn,sqlx::postgres::notice=warn`).
    #[arg(
        long,
        env = "QUOTA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// The log format a command line asks for (`--log-format`, else
/// `QUOTA_LOG_FORMAT`), read from its raw arguments: for the one line that
/// says why they did not parse. Anything but `json` is text.
pub fn log_format_of(args: impl IntoIterator<Item = OsString>, env: Option<OsString>) -> LogFormat {
    let mut asked = env;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--log-format" {
            asked = args.next();
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--log-format=")) {
            asked = Some(value.into());
        }
    }
    match asked {
        Some(value) if value.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Lets every (sub)command's flags take a negative number (`--cache-ttl -1`),
/// so that one out of range is refused as an invalid value of its flag, not
/// as an unknown argument.
fn negative_numbers(command: clap::Command) -> clap::Command {
    command
        .allow_negative_numbers(true)
        .mut_subcommands(negative_numbers)
}

/// clap's message of a refused command line as one line: `quotad: ` and its
/// first line, with the indented list that follows it when it ends in a
/// colon (the arguments not provided, say), its tips, and the `--help` of
/// `command` (see [`command_of`]).
pub fn one_line(rendered: &str, command: &str) -> String {
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let first = lines
        .next()
        .map(str::trim)
        .unwrap_or("the command line was not understood");
    let mut line = format!("quotad: {}", first.strip_prefix("error: ").unwrap_or(first));
    if line.ends_with(':') {
        let listed: Vec<&str> = lines
            .clone()
            .take_while(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
            .map(str::trim)
            .collect();
        line.push(' ');
        line.push_str(&listed.join(", "));
    }
    for tip in lines.filter_map(|l| l.trim().strip_prefix("tip: ")) {
        line.push_str(&format!(" ({tip})"));
    }
    line.push_str(&format!("; see '{command} --help'"));
    line
}

/// The (sub)command a command line's words name, `quotad token create`
/// say: its leading subcommand names, wherever flags come between them.
pub fn command_of(args: impl IntoIterator<Item = OsString>) -> String {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut path = vec![command.get_name().to_owned()];
    for arg in args {
        if arg == "--" {
            break;
        }
        let Some(sub) = arg
            .to_str()
            .and_then(|word| command.find_subcommand(word))
            .cloned()
        else {
            continue;
        };
        path.push(sub.get_name().to_owned());
        command = sub;
    }
    path.join(" ")
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where Prometheus scrapes this process.
#[derive(Debug, Args)]
pub struct MetricsAddr {
    /// Serve Prometheus metrics on GET http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464 (port 0 picks a free port). Unset or empty: no metrics.
    #[arg(long, env = "QUOTA_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service and the REST edge in one process (migrates first).
    Serve {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        migrate: MigrateArgs,
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        grpc: GrpcAddr,
        #[command(flatten)]
        http: HttpAddr,
        #[command(flatten)]
        metrics: MetricsAddr,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        throttle: ThrottleArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run the gRPC service alone (migrates first).
    Grpc {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        migrate: MigrateArgs,
        #[command(flatten)]
        service: ServiceArgs,
        #[command(flatten)]
        grpc: GrpcAddr,
        #[command(flatten)]
        metrics: MetricsAddr,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run the REST edge alone, in front of a gRPC service.
    Edge {
        /// The gRPC service to call: http://HOST:PORT, https://HOST:PORT for TLS, or
        /// HOST:PORT (plain), e.g. http://127.0.0.1:50051.
        #[arg(long, env = "QUOTA_UPSTREAM", value_name = "URL")]
        upstream: String,
        #[command(flatten)]
        ca: CaCert,
        #[command(flatten)]
        http: HttpAddr,
        #[command(flatten)]
        metrics: MetricsAddr,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        throttle: ThrottleArgs,
        #[command(flatten)]
        cache: CacheTtl,
    },
    /// Apply pending database migrations and exit (under the migration lock:
    /// with other processes migrating, one applies, the others wait).
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        lock: LockWait,
        /// List applied and pending migrations, change nothing; exit 1 if any is pending, 2 if the database cannot be read.
        #[arg(long)]
        status: bool,
    },
    /// Ask whether a server is ready: exit 0 if it is, 1 (and one line) if not.
    /// For container health checks.
    #[command(group(ArgGroup::new("target").required(true).multiple(false)))]
    Health {
        /// A gRPC server (http://HOST:PORT, https://HOST:PORT or HOST:PORT):
        /// ready when its grpc.health.v1.Health reports SERVING.
        #[arg(long, value_name = "URL", group = "target")]
        grpc: Option<String>,
        /// An HTTP or HTTPS URL (the edge's /readyz): ready when it answers 2xx.
        #[arg(long, value_name = "URL", group = "target")]
        http: Option<String>,
        #[command(flatten)]
        ca: CaCert,
        /// Give up after this long (500ms, 3s, 1m; a bare number is seconds).
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Check every token's counters against its ledger; safe while the service runs.
    ///
    /// Prints one line per disagreement and a summary. Exit status: 0 when
    /// all agree, 1 when some disagree, 2 when the database cannot be read.
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Manage API keys through the admin gRPC API of a running service.
    Token {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Where the data lives.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// sqlite://FILE, postgres://USER@HOST/DB or mysql://USER@HOST/DB.
    /// The default SQLite file is created on first start.
    #[arg(
        long,
        env = "QUOTA_DATABASE_URL",
        value_name = "URL",
        default_value = "sqlite://quota.db"
    )]
    pub database_url: String,
}

/// How a server treats migrations at start.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// auto: apply pending migrations at start, under the migration lock;
    /// off: refuse to start on a database whose migrations are behind (run
    /// `quotad migrate` first).
    #[arg(
        long,
        env = "QUOTA_MIGRATE",
        value_enum,
        value_name = "MODE",
        default_value_t = MigrateMode::Auto
    )]
    pub migrate: MigrateMode,
    #[command(flatten)]
    pub lock: LockWait,
}

/// `--migrate`: whether a server applies migrations itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    /// Apply what is pending at start.
    Auto,
    /// Apply nothing; refuse a database that is behind.
    Off,
}

/// How long to wait for another process's migrations.
#[derive(Debug, Args)]
pub struct LockWait {
    /// How long to wait for the migration lock while another process
    /// migrates (500ms, 60s, 2m; a bare number is seconds); then give up.
    #[arg(
        long,
        env = "QUOTA_MIGRATE_LOCK_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub migrate_lock_timeout: Duration,
}

/// `500ms`, `2s`, `1m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (500ms, 3s, 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a duration"))
}

/// Settings of the gRPC service.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub admin: AdminToken,
    /// Quota units per US dollar.
    #[arg(
        long,
        env = "QUOTA_PER_USD",
        value_name = "UNITS",
        default_value_t = DEFAULT_QUOTA_PER_USD
    )]
    pub quota_per_usd: i64,
}

/// The gRPC listen address.
#[derive(Debug, Args)]
pub struct GrpcAddr {
    /// Address for gRPC (port 0 picks a free port).
    #[arg(
        long,
        env = "QUOTA_GRPC_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: String,
}

/// The REST listen address.
#[derive(Debug, Args)]
pub struct HttpAddr {
    /// Address for the REST edge (port 0 picks a free port).
    #[arg(
        long,
        env = "QUOTA_HTTP_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: String,
}

/// How `token` commands reach the admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The running service's gRPC URL: http://HOST:PORT, https://HOST:PORT for TLS, or
    /// HOST:PORT (plain).
    #[arg(
        long,
        env = "QUOTA_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    #[command(flatten)]
    pub ca: CaCert,
    #[command(flatten)]
    pub admin: AdminToken,
    /// What every `token` command prints: `text` for people, `json` (one
    /// line) for programs.
    #[arg(
        long,
        env = "QUOTA_OUTPUT",
        value_enum,
        default_value_t = Output::Text,
        global = true
    )]
    pub output: Output,
}

/// The output of `token` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people; `create` prints the key alone.
    Text,
    /// One JSON value: a token object, an array of them (`list`),
    /// `{"key": ..., "token": {...}}` (`create`) or `{"deleted": true}`
    /// (`delete`).
    Json,
}

/// Whom a client of an `https://` gRPC service trusts.
#[derive(Debug, Args)]
pub struct CaCert {
    /// PEM file of the CA that signed the service's certificate (a private
    /// CA); without it an https:// service must have a publicly trusted one.
    #[arg(long, env = "QUOTA_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// Bounds and TLS of a server (`serve`, `grpc`, `edge`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Requests in flight at once in the process, all connections together
    /// (in `serve`, REST and gRPC together); past it a request is answered
    /// at once with 503 (REST) or UNAVAILABLE (gRPC).
    #[arg(
        long,
        env = "QUOTA_MAX_CONCURRENCY",
        value_name = "N",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrency: u32,
    /// PEM certificate chain (leaf first): serve gRPC and REST over TLS. Needs --tls-key.
    #[arg(
        long,
        env = "QUOTA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "QUOTA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// The edge's key-guessing throttle.
#[derive(Debug, Args)]
pub struct ThrottleArgs {
    /// Failed authentications (401) one client address may have within a
    /// minute; past it, keys not seen succeeding get 429 from that address.
    #[arg(
        long,
        env = "QUOTA_AUTH_FAILURES_PER_MINUTE",
        value_name = "N",
        default_value_t = quota_edge::throttle::DEFAULT_AUTH_FAILURES_PER_MINUTE
    )]
    pub auth_failures_per_minute: u32,
    /// A proxy (CIDR or address) whose X-Forwarded-For names the client.
    /// Repeatable, and each takes a comma-separated list (as the variable
    /// does; empty, it names none).
    #[arg(
        long = "trusted-proxy",
        env = "QUOTA_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_parser = parse_cidrs
    )]
    pub trusted_proxies: Vec<Cidrs>,
}

impl ThrottleArgs {
    /// Every block `--trusted-proxy` names.
    pub fn trusted_proxies(&self) -> Vec<IpNet> {
        self.trusted_proxies
            .iter()
            .flat_map(|list| list.0.iter().copied())
            .collect()
    }
}

/// The blocks of one comma-separated list.
#[derive(Clone, Debug)]
pub struct Cidrs(Vec<IpNet>);

/// How long reads may come from memory: the one TTL of every cache.
#[derive(Debug, Args)]
pub struct CacheTtl {
    /// How long a read may come from memory, as seconds (`1`, `0.25`) or
    /// milliseconds (`300ms`); 0 turns caching off. The service caches key
    /// look-ups (another replica's change is seen within it); the edge's
    /// throttle lets a key it saw succeed within it pass a throttled address.
    #[arg(
        long,
        env = "QUOTA_CACHE_TTL",
        value_name = "SECONDS",
        default_value = "1",
        value_parser = parse_ttl
    )]
    pub cache_ttl: Duration,
}

/// The service's read cache.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub ttl: CacheTtl,
    /// Key look-ups the service's read cache holds at most (entries of a
    /// few dozen bytes); 0 turns it off.
    #[arg(
        long,
        env = "QUOTA_CACHE_CAPACITY",
        value_name = "ENTRIES",
        default_value_t = quota_service::cache::DEFAULT_CAPACITY
    )]
    pub cache_capacity: u64,
}

/// A comma-separated list of [`parse_cidr`]'s, whose empty items are none
/// (`QUOTA_TRUSTED_PROXIES=` names no proxy).
fn parse_cidrs(value: &str) -> Result<Cidrs, String> {
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_cidr)
        .collect::<Result<_, _>>()
        .map(Cidrs)
}

/// A CIDR block, or one address (a /32 or /128).
fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is not a CIDR block (10.0.0.0/8) or an address"))
}

/// A TTL: seconds (`1`, `0.25`, `2s`) or milliseconds (`300ms`), at most a day.
fn parse_ttl(value: &str) -> Result<Duration, String> {
    let (number, scale) = match value.trim() {
        v if v.ends_with("ms") => (&v[..v.len() - 2], 0.001),
        v if v.ends_with('s') => (&v[..v.len() - 1], 1.0),
        v => (v, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if (0.0..=86_400.0).contains(&(n * scale)) => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!(
            "{value:?} is not a TTL: give seconds (1, 0.25) or milliseconds (300ms), at most a day"
        )),
    }
}

/// The admin secret: what a server accepts, what `token` commands send.
#[derive(Debug, Args)]
pub struct AdminToken {
    /// The admin credential for TokenAdmin and Consume: a server started
    /// without it refuses those methods; `token` commands send it.
    #[arg(
        long,
        env = "QUOTA_ADMIN_TOKEN",
        value_name = "SECRET",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// A file holding the admin credential (a Docker or Kubernetes secret);
    /// one trailing newline is not part of it. Not with --admin-token.
    #[arg(
        long,
        env = "QUOTA_ADMIN_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    admin_token_file: Option<PathBuf>,
}

impl AdminToken {
    /// The secret, from --admin-token or the file, or `None` when unset or
    /// empty. Both given is an error: neither silently wins. So is a file
    /// that holds nothing (a secret not mounted, say): a file was asked for;
    /// and a secret no caller could send (`"   "`, a second line, `é`).
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        let secret = match (&self.admin_token, &self.admin_token_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "QUOTA_ADMIN_TOKEN and QUOTA_ADMIN_TOKEN_FILE (--admin-token, --admin-token-file) are both set: give one"
            ),
            (Some(secret), None) => secret.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read QUOTA_ADMIN_TOKEN_FILE {}: {e}", path.display())
                })?;
                let secret = without_trailing_newline(&text);
                if secret.is_empty() {
                    anyhow::bail!(
                        "QUOTA_ADMIN_TOKEN_FILE {} is empty: it must hold the admin secret",
                        path.display()
                    );
                }
                secret.to_owned()
            }
            (None, None) => return Ok(None),
        };
        // No caller could present it after `Bearer ` (the server trims the
        // credential's ends and reads only visible ASCII, tabs and spaces
        // within): the admin methods would be closed to everyone with no
        // word said.
        let sendable = |c: char| c == ' ' || c == '\t' || c.is_ascii_graphic();
        if secret != secret.trim() || !secret.chars().all(sendable) {
            anyhow::bail!(
                "the admin secret (QUOTA_ADMIN_TOKEN, --admin-token or its file) starts or ends with white space, or holds a control or non-ASCII character, which a Bearer credential cannot carry"
            );
        }
        Ok(Some(secret).filter(|s| !s.is_empty()))
    }
}

/// `text` without one trailing `\n` or `\r\n`: editors and `echo` add one.
fn without_trailing_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

mod token;
pub use token::TokenCommand;

#[cfg(test)]
mod tests;
