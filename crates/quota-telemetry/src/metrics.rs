//! Every metric quota records: its name, its labels, and the one function
//! that records it.
//!
//! Without the recorder of [`crate::exporter::install`] (`--metrics-addr`
//! unset) each function returns at once, recording nothing. Label values are route templates, gRPC method
//! paths, status names and fixed words: never a key, never a raw URL path.

use metrics::{Counter, Histogram};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// REST requests answered: `route` (the template, or [`UNKNOWN_ROUTE`]), `method`, `status`.
pub const HTTP_REQUESTS: &str = "quota_http_requests_total";
/// Seconds from a REST request to its response headers, by `route`.
pub const HTTP_DURATION: &str = "quota_http_request_duration_seconds";
/// gRPC calls finished: `method` (`/package.Service/Method`), `code` (`OK`, `NOT_FOUND`, ...).
pub const GRPC_REQUESTS: &str = "quota_grpc_requests_total";
/// Seconds from a gRPC call to its status, by `method`.
pub const GRPC_DURATION: &str = "quota_grpc_request_duration_seconds";
/// Debits decided, by `outcome` (see [`DebitOutcome`]).
pub const DEBITS: &str = "quota_debits_total";
/// Quota units debited (repeats and refusals count nothing).
pub const DEBITED_UNITS: &str = "quota_debited_units_total";
/// Database connections of a pool, by `pool` and `state` (`in_use`, `idle`, `max`); sampled at each scrape.
pub const DB_CONNECTIONS: &str = "quota_db_connections";
/// Cache look-ups, by `cache` and `result` (`hit`, `miss`).
pub const CACHE_LOOKUPS: &str = "quota_cache_lookups_total";
/// Holds that are neither settled, released nor expired.
pub const HOLDS_LIVE: &str = "quota_holds_live";
/// Requests the key-guessing throttle refused (429).
pub const THROTTLE_REFUSALS: &str = "quota_throttle_refusals_total";

/// The `route` of every request that matched no route, so that a scan of
/// random paths adds one series, not one per path.
pub const UNKNOWN_ROUTE: &str = "unknown";
/// The `method` of every gRPC call to a method that does not exist.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Bucket bounds (seconds) of both duration histograms: from a cached read
/// (well under a millisecond) to the edge's 10 s deadline.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "REST requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "REST request duration, by route template"
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls finished, by method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC call duration, by method"
    );
    describe_counter!(DEBITS, "Debits decided, by outcome");
    describe_counter!(DEBITED_UNITS, "Quota units debited");
    describe_gauge!(
        DB_CONNECTIONS,
        "Database pool connections, by pool and state (in_use, idle, max)"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Cache look-ups, by cache and result (hit, miss)"
    );
    describe_gauge!(HOLDS_LIVE, "Holds neither settled, released nor expired");
    describe_counter!(
        THROTTLE_REFUSALS,
        "Requests refused by the key-guessing throttle"
    );
}

/// Records one answered REST request. `route` is the matched template (or
/// [`UNKNOWN_ROUTE`]), never the request's path.
pub fn http_request(route: &str, method: &http::Method, status: http::StatusCode, took: Duration) {
    let (method, status) = (method_name(method), status_name(status));
    let kept = with_kept(|kept| {
        kept.routes.with(
            route,
            || metrics::histogram!(HTTP_DURATION, "route" => route.to_owned()),
            |series| {
                series.duration.record(took.as_secs_f64());
                series.count((method, status), || {
                    metrics::counter!(
                        HTTP_REQUESTS,
                        "route" => route.to_owned(),
                        "method" => method,
                        "status" => status,
                    )
                });
            },
        );
    });
    if kept.is_none() && recording() {
        let route = route.to_owned();
        metrics::counter!(
            HTTP_REQUESTS,
            "route" => route.clone(),
            "method" => method,
            "status" => status,
        )
        .increment(1);
        metrics::histogram!(HTTP_DURATION, "route" => route).record(took.as_secs_f64());
    }
}

/// Records one finished gRPC call.
pub fn grpc_request(method: &str, code: tonic::Code, took: Duration) {
    // A path no method has, or (on a call refused before it was routed) one
    // with a key in it, is one label.
    let method = if code == tonic::Code::Unimplemented || crate::redact::has_key(method) {
        UNKNOWN_METHOD
    } else {
        method
    };
    let code = code_name(code);
    let kept = with_kept(|kept| {
        kept.grpc_methods.with(
            method,
            || metrics::histogram!(GRPC_DURATION, "method" => method.to_owned()),
            |series| {
                series.duration.record(took.as_secs_f64());
                series.count(("", code), || {
                    metrics::counter!(GRPC_REQUESTS, "method" => method.to_owned(), "code" => code)
                });
            },
        );
    });
    if kept.is_none() && recording() {
        let method = method.to_owned();
        metrics::counter!(GRPC_REQUESTS, "method" => method.clone(), "code" => code).increment(1);
        metrics::histogram!(GRPC_DURATION, "method" => method).record(took.as_secs_f64());
    }
}

/// What became of a debit (`Consume`, or a settle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebitOutcome {
    /// Units were taken.
    Debited,
    /// A repeat of a `request_id` already debited: nothing more was taken.
    Repeat,
    /// The token cannot afford it (RESOURCE_EXHAUSTED).
    Insufficient,
    /// The token or the request was refused (unknown, disabled, expired,
    /// malformed; for a settle also no such hold, or a released one).
    Refused,
    /// The database failed or was unreachable.
    Failed,
}

impl DebitOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DebitOutcome::Debited => "debited",
            DebitOutcome::Repeat => "repeat",
            DebitOutcome::Insufficient => "insufficient",
            DebitOutcome::Refused => "refused",
            DebitOutcome::Failed => "failed",
        }
    }
}

/// Records one decided debit; `units` counts only when it was [`DebitOutcome::Debited`].
pub fn debit(outcome: DebitOutcome, units: i64) {
    let units = u64::try_from(units).unwrap_or(0);
    let kept = with_kept(|kept| {
        kept.debits[outcome as usize]
            .get_or_insert_with(|| metrics::counter!(DEBITS, "outcome" => outcome.as_str()))
            .increment(1);
        if outcome == DebitOutcome::Debited {
            kept.debited_units
                .get_or_insert_with(|| metrics::counter!(DEBITED_UNITS))
                .increment(units);
        }
    });
    if kept.is_none() && recording() {
        metrics::counter!(DEBITS, "outcome" => outcome.as_str()).increment(1);
        if outcome == DebitOutcome::Debited {
            metrics::counter!(DEBITED_UNITS).increment(units);
        }
    }
}

/// Records a cache look-up of the cache named `cache` (e.g. `"key"` in the service, `"edge"`).
pub fn cache_lookup(cache: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    let register = || metrics::counter!(CACHE_LOOKUPS, "cache" => cache, "result" => result);
    let kept = with_kept(|kept| {
        let at = match kept.caches.iter().position(|(name, _)| *name == cache) {
            Some(at) => at,
            None => {
                kept.caches.push((cache, [None, None]));
                kept.caches.len() - 1
            }
        };
        kept.caches[at].1[usize::from(hit)]
            .get_or_insert_with(register)
            .increment(1);
    });
    if kept.is_none() && recording() {
        register().increment(1);
    }
}

/// Sets the number of live holds (sampled or kept up to date by the caller).
pub fn holds_live(count: u64) {
    metrics::gauge!(HOLDS_LIVE).set(count as f64);
}

/// Records one request refused by the key-guessing throttle.
pub fn throttle_refused() {
    let register = || metrics::counter!(THROTTLE_REFUSALS);
    let kept = with_kept(|kept| {
        kept.throttle_refusals
            .get_or_insert_with(register)
            .increment(1);
    });
    if kept.is_none() && recording() {
        register().increment(1);
    }
}

/// Sets the connection counts of the pool named `pool` (`"write"`, `"read"`).
pub fn db_pool(pool: &'static str, in_use: u32, idle: u32, max: u32) {
    for (state, n) in [("in_use", in_use), ("idle", idle), ("max", max)] {
        metrics::gauge!(DB_CONNECTIONS, "pool" => pool, "state" => state).set(f64::from(n));
    }
}

/// Whether [`crate::exporter::install`] has installed its recorder. Until
/// then nothing is recorded: quota installs no recorder but that one, and
/// without it the `metrics` facade would build and drop every label set for
/// nothing (about a thousand instructions a request). After it, each thread
/// keeps its handles; a thread that cannot (being torn down, or recording
/// from inside a record) goes through the facade.
static KEEP: AtomicBool = AtomicBool::new(false);

/// Whether metrics are being recorded: [`KEEP`].
fn recording() -> bool {
    KEEP.load(Ordering::Acquire)
}

/// From now on, each thread keeps the handles of the series it records
/// ([`Kept`]). Called by [`crate::exporter::install`] once its recorder is
/// the process's own.
pub(crate) fn keep_handles() {
    KEEP.store(true, Ordering::Release);
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// The handles of every series a thread has recorded, so that recording is
/// an atomic add (or a histogram sample) rather than a label set allocated,
/// hashed and looked up in the recorder's registry at every call. Each
/// thread keeps its own (no lock, no shared cache line); the handles of one
/// series all point at the recorder's one value, so counts add up across
/// threads. Label values come from bounded sets (route templates, gRPC
/// method paths, status names, fixed words), so this stays small; it never
/// holds a key.
#[derive(Default)]
struct Kept {
    /// By route template: the duration histogram and a counter per (method, status).
    routes: Named,
    /// By gRPC method path: the duration histogram and a counter per ("", code).
    grpc_methods: Named,
    /// By [`DebitOutcome`] (its discriminant).
    debits: [Option<Counter>; 5],
    debited_units: Option<Counter>,
    /// By cache name: the counter of misses, then of hits.
    caches: Vec<(&'static str, [Option<Counter>; 2])>,
    throttle_refusals: Option<Counter>,
}

/// Runs `record` with this thread's [`Kept`] handles, or returns `None`
/// when handles are not kept (no recorder of ours yet, or the thread is
/// being torn down): the caller then records through the facade if
/// [`recording`], or not at all.
fn with_kept<R>(record: impl FnOnce(&mut Kept) -> R) -> Option<R> {
    if !recording() {
        return None;
    }
    KEPT.try_with(|kept| kept.try_borrow_mut().ok().map(|mut kept| record(&mut kept)))
        .ok()
        .flatten()
}

/// Series named by a label that is not `'static` (a route template, a gRPC
/// method path), looked up by `&str` without allocating.
#[derive(Default)]
struct Named(HashMap<Box<str>, Series>);

impl Named {
    /// Runs `record` on the series of `name`, registering its histogram
    /// with `duration` the first time.
    fn with(
        &mut self,
        name: &str,
        duration: impl FnOnce() -> Histogram,
        record: impl FnOnce(&mut Series),
    ) {
        match self.0.get_mut(name) {
            Some(series) => record(series),
            None => record(self.0.entry(name.into()).or_insert_with(|| Series {
                duration: duration(),
                counts: Vec::new(),
            })),
        }
    }
}

/// One route's (or gRPC method's) duration histogram and request counters.
struct Series {
    duration: Histogram,
    /// The counter of each pair of further label values seen: (method,
    /// status) for a route, ("", code) for a gRPC method. A handful each.
    counts: Vec<((&'static str, &'static str), Counter)>,
}

impl Series {
    /// Adds one to the counter of `labels`, registering it the first time.
    fn count(&mut self, labels: (&'static str, &'static str), register: impl FnOnce() -> Counter) {
        match self.counts.iter().find(|(l, _)| *l == labels) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = register();
                counter.increment(1);
                self.counts.push((labels, counter));
            }
        }
    }
}

fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

fn status_name(status: http::StatusCode) -> &'static str {
    // Only the statuses quota answers with get a name of their own; the
    // label set stays bounded whatever a layer below returns.
    match status.as_u16() {
        200 => "200",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The canonical name of a gRPC status code, as the gRPC spec writes it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each sample of a rendered scrape, by `name{labels}`.
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn kept_handles_count_each_label_set_once_across_threads() {
        fn record_some() {
            let (get, took) = (http::Method::GET, Duration::from_micros(700));
            let (ok, missing) = (http::StatusCode::OK, http::StatusCode::NOT_FOUND);
            for _ in 0..3 {
                http_request("/kept", &get, ok, took);
            }
            http_request("/kept", &get, missing, took);
            http_request("/kept/other", &get, ok, took);
            grpc_request("/kept.v1.S/M", tonic::Code::Ok, took);
            grpc_request("/kept.v1.S/M", tonic::Code::NotFound, took);
            grpc_request("/kept.v1.S/Nope", tonic::Code::Unimplemented, took);
            cache_lookup("kept", true);
            cache_lookup("kept", false);
            debit(DebitOutcome::Debited, 5);
            debit(DebitOutcome::Repeat, 5);
            throttle_refused();
        }
        // Before any recorder: nothing recorded, nothing kept.
        record_some();
        // The only test of this binary that installs a recorder.
        let handle = crate::exporter::install().unwrap();
        record_some();
        std::thread::spawn(record_some).join().unwrap();
        record_some();

        let text = handle.render();
        let got = samples(&text);
        let at = |series: &str| got.get(series).copied().unwrap_or(f64::NAN);
        let http_count = |route: &str, status: &str| {
            at(&format!(
                r#"quota_http_requests_total{{route="{route}",method="GET",status="{status}"}}"#
            ))
        };
        assert_eq!(http_count("/kept", "200"), 9.0, "{text}");
        assert_eq!(http_count("/kept", "404"), 3.0, "{text}");
        assert_eq!(http_count("/kept/other", "200"), 3.0, "{text}");
        assert_eq!(
            at(r#"quota_http_request_duration_seconds_count{route="/kept"}"#),
            12.0,
            "{text}"
        );
        assert_eq!(
            at(r#"quota_http_request_duration_seconds_bucket{route="/kept",le="0.0005"}"#),
            0.0,
            "{text}"
        );
        assert_eq!(
            at(r#"quota_http_request_duration_seconds_bucket{route="/kept",le="0.001"}"#),
            12.0,
            "{text}"
        );
        let grpc_count = |method: &str, code: &str| {
            at(&format!(
                r#"quota_grpc_requests_total{{method="{method}",code="{code}"}}"#
            ))
        };
        assert_eq!(grpc_count("/kept.v1.S/M", "OK"), 3.0, "{text}");
        assert_eq!(grpc_count("/kept.v1.S/M", "NOT_FOUND"), 3.0, "{text}");
        assert_eq!(grpc_count(UNKNOWN_METHOD, "UNIMPLEMENTED"), 3.0, "{text}");
        assert!(!text.contains("/kept.v1.S/Nope"), "{text}");
        assert_eq!(
            at(r#"quota_grpc_request_duration_seconds_count{method="/kept.v1.S/M"}"#),
            6.0,
            "{text}"
        );
        assert_eq!(
            at(r#"quota_cache_lookups_total{cache="kept",result="hit"}"#),
            3.0,
            "{text}"
        );
        assert_eq!(
            at(r#"quota_cache_lookups_total{cache="kept",result="miss"}"#),
            3.0,
            "{text}"
        );
        assert_eq!(
            at(r#"quota_debits_total{outcome="debited"}"#),
            3.0,
            "{text}"
        );
        assert_eq!(at(r#"quota_debits_total{outcome="repeat"}"#), 3.0, "{text}");
        assert_eq!(at("quota_debited_units_total"), 15.0, "{text}");
        assert_eq!(at("quota_throttle_refusals_total"), 3.0, "{text}");
        // Only what was recorded is exported: no outcome never decided.
        assert!(!text.contains(r#"outcome="failed""#), "{text}");
    }

    #[test]
    fn status_labels_stay_bounded() {
        assert_eq!(status_name(http::StatusCode::OK), "200");
        assert_eq!(status_name(http::StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(
            status_name(http::StatusCode::from_u16(599).unwrap_or_default()),
            "5xx"
        );
        assert_eq!(method_name(&http::Method::CONNECT), "OTHER");
    }
}
