//! Hosted GET: the platform's app pulls a hosted Data Source's rows from
//! our store, per user, each time it synchronizes. No third-party API call
//! is made: this is the seeds' remedy that "bypasses the API limit".
//!
//! `GET /datasources/{name}/rows?page_size=&page_token=` with
//! `Authorization: Bearer <JWT>` answers
//! `{"rows": [...], "next_page_token": "..." | null}`.
//!
//! The rules, in the order a request meets them:
//!
//! 1. **Who**: an HS256 JWT signed with the Data Source's own secret,
//!    checked by `jsonwebtoken` with HS256 as the only algorithm (so `none`
//!    and algorithm confusion fail), `exp` required and in the future, `sub`
//!    and `org` required. Anything else is 401 with no data. The org whose
//!    rows are read is the token's `org`, never a parameter.
//! 2. **What**: the configured CEL `filter` over `row` and `user` (every
//!    claim) keeps a user's rows; a row the filter cannot evaluate is not
//!    served (as decision nodes treat a missing field: "no").
//! 3. **Cheap re-sync**: the `ETag` is the Data Source's write version for
//!    that org plus a hash of (data source, org, the user's claims but the
//!    time ones, page size, page token). `If-None-Match` with it is 304 after
//!    reading the version only: rows are not read.
//! 4. **Paging**: keyset by row id. A page token carries the last id
//!    examined and who it was issued to (data source, org, `sub`, claims
//!    hash), signed with a key derived from the data source's secret (so it
//!    is no bearer token), and expires. A tampered, expired or someone
//!    else's token is 400. A row is served at most once per paging run:
//!    rows written between pages are served when their id is still ahead.

use crate::config::app::AppConfig;
use crate::config::datasource::{DataSourceMode, DEFAULT_MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE};
use crate::connector::secrets::Secret;
use crate::core::clock::SharedClock;
use crate::core::error::{Error, Result};
use crate::core::tenant::Tenant;
use crate::store::hosted::{HostedRows, RowIndex};
use crate::store::outbox::{OutboxRow, RowChange};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long a page token stays good: one synchronization, with room.
const PAGE_TOKEN_TTL_SECS: i64 = 3600;

/// Raw rows read per store round trip is the page size; at most this many
/// rounds per request, so a filter that keeps few rows cannot make one
/// request read a whole large Data Source (the page then comes back short,
/// with a token to go on, and says why in `cut_short`).
const MAX_ROUNDS: usize = 10;

/// At most this many stored rows are read for one request, whatever the
/// page size: a bound on the consistent reads one caller can cause.
pub const MAX_ROWS_READ: usize = 5_000;

/// Rows' JSON in one response stays under this many bytes (Lambda's
/// response limit is 6 MB; the rest is headroom for the envelope and
/// headers): a page that would pass it is cut short with a token to go on.
pub(crate) const MAX_RESPONSE_BYTES: usize = 5 * 1024 * 1024;

/// Claims that change with every token the platform mints and do not say
/// who the user is: left out of the ETag so re-syncs with a fresh token hit.
const TIME_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "jti"];

/// One request, as both edges (Lambda's Function URL, `metered serve`) see it.
#[derive(Debug, Clone, Default)]
pub struct HostedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, without the query string.
    pub path: String,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<String>,
}

impl HostedRequest {
    /// The request as both HTTP edges (lambda_http, axum) hand it over;
    /// the body is not read.
    pub fn from_http<B>(req: &http::Request<B>) -> Self {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            authorization: header("authorization"),
            if_none_match: header("if-none-match"),
        }
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers besides `content-type: application/json`.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body (empty for 304).
    pub body: String,
}

impl HostedResponse {
    /// As an HTTP response for either edge (`B` is its body type): JSON
    /// but for a 304, which has no body.
    pub fn into_http<B: From<String>>(self) -> http::Response<B> {
        let mut b = http::Response::builder().status(self.status);
        if self.status != 304 {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(B::from(self.body)).unwrap_or_else(|_| {
            let mut r =
                http::Response::new(B::from("{\"error\":\"bad response header\"}".to_string()));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }

    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("cache-control", "private, no-cache".into())],
            body: body.to_string(),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        let mut r = Self::json(status, &serde_json::json!({ "error": message.into() }));
        if status == 401 {
            r.headers.push(("www-authenticate", "Bearer".into()));
        }
        r
    }
}

/// A hosted Data Source, ready to serve: its keys and compiled filter.
struct Served {
    decoding: DecodingKey,
    page_encoding: EncodingKey,
    page_decoding: DecodingKey,
    filter: Option<cel::Program>,
    /// The index the filter allows ([`RowIndex::of_filter`]).
    index: Option<RowIndex>,
    max_page_size: u32,
}

/// Serves every hosted Data Source of one app from one store.
pub struct HostedService {
    app: String,
    store: Arc<dyn HostedRows>,
    clock: SharedClock,
    served: BTreeMap<String, Served>,
}

/// What a page token carries (signed; opaque to the caller).
#[derive(Debug, Serialize, Deserialize)]
struct PageClaims {
    ds: String,
    org: String,
    sub: String,
    /// Hash of the caller's claims (see [`TIME_CLAIMS`]) and page size.
    who: String,
    /// The last row id examined.
    after: String,
    exp: i64,
}

fn page_key(secret: &Secret) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"metered hosted page token\0");
    h.update(secret.expose().as_bytes());
    h.finalize().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HostedService {
    /// Compiles the hosted Data Sources of `config`; `secrets` holds each
    /// one's resolved JWT key (see [`resolve_secrets`]).
    pub fn new(
        config: &AppConfig,
        secrets: BTreeMap<String, Secret>,
        store: Arc<dyn HostedRows>,
        clock: SharedClock,
    ) -> Result<Self> {
        let mut served = BTreeMap::new();
        let mut keys: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, ds) in &config.datasources {
            if ds.mode != DataSourceMode::Hosted {
                continue;
            }
            let secret = secrets
                .get(name)
                .ok_or_else(|| Error::Config(format!("datasources.{name}.secret: not resolved")))?;
            check_secret(name, secret, &mut keys)?;
            let filter = ds
                .filter
                .as_deref()
                .map(|f| {
                    crate::config::workflow::compile_with(
                        &format!("datasources.{name}.filter"),
                        f,
                        &["row", "user"],
                    )
                })
                .transpose()?;
            let page = page_key(secret);
            served.insert(
                name.clone(),
                Served {
                    decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
                    page_encoding: EncodingKey::from_secret(&page),
                    page_decoding: DecodingKey::from_secret(&page),
                    filter,
                    index: ds.filter.as_deref().and_then(RowIndex::of_filter),
                    max_page_size: ds.max_page_size.unwrap_or(DEFAULT_MAX_PAGE_SIZE),
                },
            );
        }
        Ok(Self {
            app: config.app.name.clone(),
            store,
            clock,
            served,
        })
    }

    /// The hosted Data Sources' names.
    pub fn datasources(&self) -> impl Iterator<Item = &str> {
        self.served.keys().map(String::as_str)
    }

    /// Answers one request; never panics, never errors: a store failure is
    /// a 503 that says to retry, with the detail only in our log (the
    /// caller is the platform's user: table names and adapter messages are
    /// not theirs to read).
    pub async fn handle(&self, req: &HostedRequest) -> HostedResponse {
        match self.try_handle(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, path = %req.path, "hosted GET failed");
                HostedResponse::error(503, unavailable())
            }
        }
    }

    async fn try_handle(&self, req: &HostedRequest) -> Result<HostedResponse> {
        let mut asked = match self.ask(req) {
            Ok(asked) => asked,
            Err(refusal) => return Ok(refusal),
        };
        // 3. The version before the rows (see `HostedRows::rows_version`):
        // of the parts the user's claim names when the rows are indexed by
        // it, else of the whole Data Source.
        let key = Tenant::new(&asked.org, &self.app);
        let (version, source) = self
            .version_and_source(asked.ds, asked.name, &key, &asked.claims)
            .await?;
        // The ETag is `"v{version}-{who}-{content}"`: who asks (their
        // identifying claims and the page token) and a hash of the page they
        // get. Nothing written since (same version, same caller): 304
        // without reading a row. Rows written since, but not this caller's
        // (the content hash is the same): 304 after reading them, so one
        // customer's change does not re-download every other user's rows.
        let who_tag = {
            let mut h = Sha256::new();
            h.update(asked.who.as_bytes());
            h.update(asked.page_token.as_deref().unwrap_or("").as_bytes());
            hex(&h.finalize())[..16].to_string()
        };
        let client_tags = etags(req.if_none_match.as_deref());
        if let Some(etag) = unchanged_since(&client_tags, &version, &who_tag) {
            return Ok(not_modified(etag));
        }
        // 2 and 4: the user's rows after the cursor. Their claims are not
        // read after this: the filter takes them, uncopied.
        let user = std::mem::take(&mut asked.claims);
        let page = self.read_rows(&asked, user, &source, &key).await?;
        // A full page exactly at the end costs the caller one empty page:
        // cheaper than reading one row ahead on every page.
        let next = match (&page.cursor, page.at_end) {
            (Some(last), false) => Some(self.page_token(&asked, last)?),
            _ => None,
        };
        let content_tag = page.content_tag();
        let etag = format!("\"v{version}-{who_tag}-{content_tag}\"");
        if client_tags.iter().any(|t| {
            matches!(t, ClientTag::Ours { who, content, .. } if *who == who_tag && *content == content_tag)
        }) {
            return Ok(not_modified(etag));
        }
        let mut body = serde_json::json!({ "rows": page.rows, "next_page_token": next });
        // A page is full unless it is the last, or a bound cut it short:
        // then `cut_short` says which ("rows_read": the filter kept few of
        // the rows one request may read; "bytes": the response size cap).
        if let (Some(why), Some(_)) = (page.cut_short, &next) {
            body["cut_short"] = why.into();
        }
        let mut r = HostedResponse::json(200, &body);
        r.headers.push(("etag", etag));
        Ok(r)
    }

    /// Reads and checks a request — the route, the method, the Data
    /// Source, who is calling (1), the query and the page token — or the
    /// answer that refuses it, naming what was wrong.
    fn ask<'a>(&'a self, req: &HostedRequest) -> std::result::Result<Asked<'a>, HostedResponse> {
        let Some(asked_name) = req
            .path
            .strip_prefix("/datasources/")
            .and_then(|rest| rest.strip_suffix("/rows"))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            let route = "no such route; use GET /datasources/{name}/rows";
            return Err(HostedResponse::error(404, route));
        };
        if !req.method.eq_ignore_ascii_case("GET") {
            return Err(method_not_allowed(&req.method));
        }
        let Some((name, ds)) = self.served.get_key_value(asked_name) else {
            let missing = format!("no hosted Data Source `{asked_name}`");
            return Err(HostedResponse::error(404, missing));
        };
        let claims = self
            .authenticate(ds, req.authorization.as_deref())
            .map_err(|why| HostedResponse::error(401, why))?;
        let (page_size, page_token) = page_query(req.query.as_deref(), ds.max_page_size)
            .map_err(|why| HostedResponse::error(400, why))?;
        let org = claims["org"].as_str().unwrap_or_default().to_string();
        let sub = claims["sub"].as_str().unwrap_or_default().to_string();
        let who = who_hash(name, &org, &claims, page_size);
        let mut asked = Asked {
            name,
            ds,
            claims,
            org,
            sub,
            who,
            page_size,
            page_token,
            after: None,
        };
        if let Some(t) = &asked.page_token {
            let after = self
                .open_page_token(&asked, t)
                .map_err(|why| HostedResponse::error(400, format!("page_token: {why}")))?;
            asked.after = Some(after);
        }
        Ok(asked)
    }

    /// The caller's rows after the page token's cursor, up to a page, in
    /// rounds of reads bounded by [`MAX_ROUNDS`], [`MAX_ROWS_READ`] and
    /// [`MAX_RESPONSE_BYTES`].
    async fn read_rows(
        &self,
        asked: &Asked<'_>,
        user: Map<String, Value>,
        source: &Source,
        key: &Tenant,
    ) -> Result<PageRows> {
        // One CEL context per request (building one is costly): `user`
        // once, `row` rebound per row.
        let mut filter = RowFilter::new(asked.ds.filter.as_ref(), Value::Object(user));
        let page_size = asked.page_size as usize;
        let mut page = PageRows {
            rows: Vec::new(),
            content: Sha256::new(),
            cursor: asked.after.clone(),
            at_end: false,
            cut_short: None,
        };
        let (mut bytes, mut read) = (0usize, 0usize);
        'rounds: for round in 0.. {
            if round == MAX_ROUNDS || read >= MAX_ROWS_READ {
                page.cut_short = Some("rows_read");
                break;
            }
            let want = page_size.min(MAX_ROWS_READ - read) as u32;
            let (batch, short, examined) = self
                .read_batch(source, key, asked.name, page.cursor.as_deref(), want)
                .await?;
            read += examined;
            for row in batch {
                if let RowChange::Insert(value) = &row.change {
                    if filter.keeps(value) {
                        // Every row is serialized once, for its size and the hash.
                        let json = value.to_string();
                        if !page.rows.is_empty() && bytes + json.len() + 1 > MAX_RESPONSE_BYTES {
                            // This row opens the next page.
                            page.cut_short = Some("bytes");
                            break 'rounds;
                        }
                        bytes += json.len() + 1;
                        page.content.update(json.as_bytes());
                        page.content.update(b"\n");
                        page.rows.push(value.clone());
                    }
                }
                page.cursor = Some(row.id);
                if page.rows.len() == page_size {
                    break 'rounds;
                }
            }
            if short {
                page.at_end = true;
                break;
            }
        }
        Ok(page)
    }

    /// The ETag's version and where the caller's rows are read from.
    async fn version_and_source(
        &self,
        ds: &Served,
        name: &str,
        key: &Tenant,
        claims: &Map<String, Value>,
    ) -> Result<(String, Source)> {
        if let Some(ix) = &ds.index {
            let parts = ix.parts_of_user(claims).unwrap_or_default();
            let state = self.store.index_state(key, name, &parts).await?;
            // Only an index that holds every stored row is read; until the
            // first write under this filter has indexed them, rows are read
            // in order and filtered.
            if state.indexed_by.as_deref() == Some(ix.field.as_str()) {
                return Ok((format!("p{}", state.version), Source::Parts(parts)));
            }
        }
        let version = self.store.rows_version(key, name).await?;
        Ok((version.to_string(), Source::All))
    }

    /// Up to `want` rows after `after` from `source`, whether they are the
    /// last, and how many stored rows were read for them.
    async fn read_batch(
        &self,
        source: &Source,
        key: &Tenant,
        name: &str,
        after: Option<&str>,
        want: u32,
    ) -> Result<(Vec<OutboxRow>, bool, usize)> {
        let parts = match source {
            Source::All => {
                let batch = self.store.rows_after(key, name, after, want).await?;
                let (end, read) = (batch.len() < want as usize, batch.len());
                return Ok((batch, end, read));
            }
            Source::Parts(parts) => parts,
        };
        // Several parts (`in` over a list claim): each read after the
        // cursor and merged in id order. Rows past the first full part's
        // last id wait for the next batch: that part may hold rows before
        // them.
        let lists = futures::future::try_join_all(
            parts
                .iter()
                .map(|part| self.store.part_rows_after(key, name, part, after, want)),
        )
        .await?;
        let bound = lists
            .iter()
            .filter(|l| l.len() == want as usize)
            .filter_map(|l| l.last().map(|r| r.id.clone()))
            .min();
        let read = lists.iter().map(Vec::len).sum();
        let mut merged: Vec<OutboxRow> = lists.into_iter().flatten().collect();
        merged.sort_by(|a, b| a.id.cmp(&b.id));
        // A row that moved between two parts the user reads may be pointed
        // to from both (DynamoDB keeps pointers): served once.
        merged.dedup_by(|a, b| a.id == b.id);
        if let Some(bound) = &bound {
            merged.retain(|r| &r.id <= bound);
        }
        let end = bound.is_none() && merged.len() <= want as usize;
        merged.truncate(want as usize);
        Ok((merged, end, read))
    }

    fn authenticate(
        &self,
        ds: &Served,
        authorization: Option<&str>,
    ) -> std::result::Result<Map<String, Value>, String> {
        let header = authorization.ok_or("missing Authorization header (Bearer JWT)")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or("Authorization: expected `Bearer <JWT>`")?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry against the injected clock, below (the tests' clock, the
        // system's on Lambda), not the library's own reading of the time.
        validation.validate_exp = false;
        // `aud` is whatever the platform puts there; the key, one per Data
        // Source, already says which service a token is for.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &ds.decoding, &validation)
            .map_err(|e| format!("bearer token refused: {e}"))?;
        let claims = data.claims;
        check_times(&claims, self.clock.now().timestamp())?;
        for claim in ["org", "sub"] {
            match claims.get(claim) {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(format!(
                        "bearer token refused: claim `{claim}` must be a non-empty string"
                    ))
                }
            }
        }
        Ok(claims)
    }

    /// A signed token for the page after `after`, for this caller alone.
    fn page_token(&self, asked: &Asked<'_>, after: &str) -> Result<String> {
        let (ds, name, org, sub, who) = (asked.ds, asked.name, &asked.org, &asked.sub, &asked.who);
        let claims = PageClaims {
            ds: name.into(),
            org: org.clone(),
            sub: sub.clone(),
            who: who.clone(),
            after: after.into(),
            exp: self.clock.now().timestamp() + PAGE_TOKEN_TTL_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &ds.page_encoding)
            .map_err(|e| Error::Config(format!("page token: {e}")))
    }

    /// The cursor a page token carries, when this service issued it to
    /// this caller, for this Data Source and page size, and it has not
    /// expired; else why not.
    fn open_page_token(
        &self,
        asked: &Asked<'_>,
        token: &str,
    ) -> std::result::Result<String, String> {
        let (ds, name, org, sub, who) = (asked.ds, asked.name, &asked.org, &asked.sub, &asked.who);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        // Expiry against our clock, below.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<PageClaims>(token, &ds.page_decoding, &validation)
            .map_err(|_| {
                "not a page token this service issued (tampered or malformed)".to_string()
            })?
            .claims;
        if claims.exp < self.clock.now().timestamp() {
            return Err("expired; start again without page_token".into());
        }
        if claims.ds != name || &claims.org != org || &claims.sub != sub || &claims.who != who {
            return Err("issued to another caller, data source or page size".into());
        }
        Ok(claims.after)
    }
}

/// A request read and checked ([`HostedService::ask`]).
struct Asked<'a> {
    name: &'a str,
    ds: &'a Served,
    /// The caller's verified JWT claims.
    claims: Map<String, Value>,
    org: String,
    sub: String,
    /// [`who_hash`] of the caller's view.
    who: String,
    page_size: u32,
    page_token: Option<String>,
    /// The row id the page token carries.
    after: Option<String>,
}

/// One page of rows as read.
struct PageRows {
    rows: Vec<Value>,
    /// The rows' hash, fed as each is taken.
    content: Sha256,
    /// The last row id examined.
    cursor: Option<String>,
    /// No row follows `cursor`.
    at_end: bool,
    /// Which bound cut the page short, if one did.
    cut_short: Option<&'static str>,
}

impl PageRows {
    /// The ETag's last part: the rows, where the page ends, and whether it
    /// is the last.
    fn content_tag(&self) -> String {
        let mut content = self.content.clone();
        content.update(self.cursor.as_deref().unwrap_or("").as_bytes());
        content.update([u8::from(self.at_end)]);
        hex(&content.finalize())[..16].to_string()
    }
}

/// A 405 that names the one method allowed.
fn method_not_allowed(method: &str) -> HostedResponse {
    let mut r = HostedResponse::error(405, format!("{method} is not allowed; use GET"));
    r.headers.push(("allow", "GET".into()));
    r
}

/// The page size and page token a query asks for, each named when wrong.
fn page_query(
    query: Option<&str>,
    max_page_size: u32,
) -> std::result::Result<(u32, Option<String>), String> {
    let mut page_size = DEFAULT_PAGE_SIZE.min(max_page_size);
    let mut page_token = None;
    for (k, v) in form_urlencoded(query.unwrap_or("")) {
        match k.as_str() {
            "page_size" => match v.parse::<u32>() {
                Ok(n) if (1..=max_page_size).contains(&n) => page_size = n,
                _ => {
                    return Err(format!(
                        "page_size: expected a whole number from 1 to {max_page_size}, got {v:?}"
                    ))
                }
            },
            "page_token" if !v.is_empty() => page_token = Some(v),
            "page_token" => {}
            other => {
                return Err(format!(
                    "{other}: unknown query parameter; use page_size and page_token"
                ))
            }
        }
    }
    Ok((page_size, page_token))
}

/// The ETag to answer 304 with before reading a row: a tag of the
/// client's for this version and caller (or `*`).
fn unchanged_since(client_tags: &[ClientTag], version: &str, who_tag: &str) -> Option<String> {
    client_tags.iter().find_map(|t| match t {
        ClientTag::Ours {
            version: v,
            who,
            content,
        } if v == version && who == who_tag => Some(format!("\"v{version}-{who}-{content}\"")),
        ClientTag::Ours { .. } => None,
        ClientTag::Any => Some(format!("\"v{version}-{who_tag}-0\"")),
    })
}

/// Where a request's rows are read from.
enum Source {
    /// Every row of the Data Source, in id order, filtered.
    All,
    /// Only the parts the user's claim names (none: the claim is missing).
    Parts(Vec<String>),
}

/// A user's filter over rows: the CEL context is built once per request.
struct RowFilter<'a> {
    program: Option<&'a cel::Program>,
    ctx: cel::Context<'a, 'a>,
    user_ok: bool,
}

impl<'a> RowFilter<'a> {
    fn new(program: Option<&'a cel::Program>, user: Value) -> Self {
        let mut ctx = cel::Context::default();
        let user_ok = match program.map(|_| cel::to_value(user)) {
            Some(Ok(v)) => {
                ctx.add_variable_from_value("user", v);
                true
            }
            Some(Err(_)) => false,
            None => true,
        };
        Self {
            program,
            ctx,
            user_ok,
        }
    }

    /// Does the filter keep `row`? No filter keeps every row; a row the
    /// filter cannot evaluate is not kept.
    fn keeps(&mut self, row: &Value) -> bool {
        let Some(program) = self.program else {
            return true;
        };
        let Ok(v) = cel::to_value(row.clone()) else {
            return false;
        };
        self.ctx.add_variable_from_value("row", v);
        self.user_ok && matches!(program.execute(&self.ctx), Ok(cel::Value::Bool(true)))
    }
}

/// (data source, org, the claims that say who the user is, page size).
fn who_hash(name: &str, org: &str, claims: &Map<String, Value>, page_size: u32) -> String {
    let stable: BTreeMap<&String, &Value> = claims
        .iter()
        .filter(|(k, _)| !TIME_CLAIMS.contains(&k.as_str()))
        .collect();
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(org.as_bytes());
    h.update([0]);
    h.update(
        serde_json::to_string(&stable)
            .unwrap_or_default()
            .as_bytes(),
    );
    h.update(page_size.to_be_bytes());
    hex(&h.finalize())[..32].to_string()
}

/// One entity tag of an `If-None-Match` header.
enum ClientTag {
    /// `*`: any version.
    Any,
    /// One of ours, in its parts.
    Ours {
        version: String,
        who: String,
        content: String,
    },
}

/// The tags of an `If-None-Match` header that could be ours (others are
/// ignored: they match nothing).
fn etags(if_none_match: Option<&str>) -> Vec<ClientTag> {
    let Some(h) = if_none_match else {
        return Vec::new();
    };
    h.split(',')
        .filter_map(|t| {
            let t = t.trim().trim_start_matches("W/");
            if t == "*" {
                return Some(ClientTag::Any);
            }
            let inner = t.strip_prefix("\"v")?.strip_suffix('"')?;
            let mut parts = inner.splitn(3, '-');
            let version = parts.next()?.to_string();
            let who = parts.next()?.to_string();
            let content = parts.next()?.to_string();
            Some(ClientTag::Ours {
                version,
                who,
                content,
            })
        })
        .collect()
}

/// A 304 carrying `etag`.
fn not_modified(etag: String) -> HostedResponse {
    HostedResponse {
        status: 304,
        headers: vec![
            ("etag", etag),
            ("cache-control", "private, no-cache".into()),
        ],
        body: String::new(),
    }
}

/// `a=1&b=x%20y` → pairs, percent- and plus-decoded.
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What a caller reads when the row store failed.
fn unavailable() -> String {
    "the rows cannot be read right now; retry shortly".to_string()
}

/// Leeway for clock skew between the platform that mints tokens and us.
const LEEWAY_SECS: i64 = 30;

/// The shortest HS256 key accepted: RFC 7518 §3.2 asks for a key of at
/// least the hash's size (256 bits). A short one can be found offline from
/// a single token.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// One hosted Data Source's key: long enough, and its own (a token for one
/// Data Source must not read another, say a filtered one's rows through an
/// unfiltered one).
fn check_secret<'a>(
    name: &'a str,
    secret: &'a Secret,
    keys: &mut BTreeMap<&'a str, &'a str>,
) -> Result<()> {
    let len = secret.expose().len();
    if len < MIN_SECRET_BYTES {
        return Err(Error::Config(format!(
            "datasources.{name}.secret: the key is {len} bytes; an HS256 key must be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
        )));
    }
    if let Some(other) = keys.insert(secret.expose(), name) {
        return Err(Error::Config(format!(
            "datasources.{name}.secret: the same key as datasources.{other}.secret; a token for one would read the other's rows: give each hosted Data Source its own key"
        )));
    }
    Ok(())
}

/// `exp` (required), `nbf` and `iat` (when present) against `now`, each
/// with [`LEEWAY_SECS`]; integers only, and no arithmetic that can
/// overflow on a hostile value. RFC 7519 §4.1.5: a token before its `nbf`
/// must not be accepted.
fn check_times(claims: &Map<String, Value>, now: i64) -> std::result::Result<(), String> {
    let int = |name: &str| -> std::result::Result<Option<i64>, String> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                format!(
                    "bearer token refused: claim `{name}` must be an integer (seconds since 1970)"
                )
            }),
        }
    };
    match int("exp")? {
        Some(exp) if exp.saturating_add(LEEWAY_SECS) >= now => {}
        _ => return Err("bearer token refused: ExpiredSignature".into()),
    }
    if let Some(nbf) = int("nbf")? {
        if nbf.saturating_sub(LEEWAY_SECS) > now {
            return Err("bearer token refused: not valid yet (`nbf` is in the future)".into());
        }
    }
    if let Some(iat) = int("iat")? {
        if iat.saturating_sub(LEEWAY_SECS) > now {
            return Err("bearer token refused: issued in the future (`iat`)".into());
        }
    }
    Ok(())
}

/// Resolves every hosted Data Source's secret (env, Secrets Manager, SSM).
pub async fn resolve_secrets(
    config: &AppConfig,
    stores: Option<&crate::connector::secrets::SecretStores>,
) -> Result<BTreeMap<String, Secret>> {
    let mut out = BTreeMap::new();
    for (name, ds) in &config.datasources {
        if let (DataSourceMode::Hosted, Some(r)) = (ds.mode, &ds.secret) {
            let field = format!("datasources.{name}.secret");
            let secret = crate::connector::secrets::resolve_for(&field, r, stores).await?;
            out.insert(name.clone(), secret);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod token_tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn times_are_checked_with_leeway_and_without_overflow() {
        let now = 1_800_000_000;
        assert!(check_times(&claims(json!({"exp": now + 60})), now).is_ok());
        assert!(
            check_times(&claims(json!({"exp": now - 10})), now).is_ok(),
            "leeway"
        );
        assert!(check_times(&claims(json!({"exp": now - 31})), now).is_err());
        assert!(check_times(&claims(json!({"exp": i64::MAX})), now).is_ok());
        assert!(check_times(&claims(json!({"exp": i64::MIN})), now).is_err());
        assert!(
            check_times(&claims(json!({"exp": 1.5e12})), now).is_err(),
            "a float"
        );
        assert!(
            check_times(&claims(json!({"exp": now + 60, "nbf": now + 3600})), now)
                .unwrap_err()
                .contains("nbf")
        );
        assert!(check_times(&claims(json!({"exp": now + 60, "nbf": now + 20})), now).is_ok());
        assert!(check_times(&claims(json!({"exp": now + 60, "nbf": i64::MIN})), now).is_ok());
        assert!(check_times(&claims(json!({"exp": now + 60, "nbf": "soon"})), now).is_err());
        assert!(
            check_times(&claims(json!({"exp": now + 60, "iat": now + 600})), now)
                .unwrap_err()
                .contains("iat")
        );
    }

    #[test]
    fn secrets_must_be_long_and_distinct() {
        let mut keys = BTreeMap::new();
        let short = Secret::new("dev-only");
        assert!(check_secret("a", &short, &mut keys)
            .unwrap_err()
            .to_string()
            .contains("at least 32"));
        let long = Secret::new("0123456789abcdef0123456789abcdef");
        let again = Secret::new("0123456789abcdef0123456789abcdef");
        check_secret("a", &long, &mut keys).unwrap();
        let err = check_secret("b", &again, &mut keys)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("datasources.a.secret") && !err.contains("0123456789"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_what_is_wrong_with_it() {
        assert_eq!(
            page_query(None, 500),
            Ok((DEFAULT_PAGE_SIZE.min(500), None))
        );
        assert_eq!(page_query(Some("page_size=7"), 10), Ok((7, None)));
        assert_eq!(
            page_query(Some("page_size=20"), 10).unwrap_err(),
            "page_size: expected a whole number from 1 to 10, got \"20\""
        );
        assert!(page_query(Some("page_size=0"), 10)
            .unwrap_err()
            .starts_with("page_size:"));
        assert_eq!(
            page_query(Some("page_token=abc&page_token="), 10),
            Ok((DEFAULT_PAGE_SIZE.min(10), Some("abc".into()))),
            "an empty token is no token"
        );
        assert!(page_query(Some("limit=5"), 10)
            .unwrap_err()
            .starts_with("limit: unknown query parameter"));
    }

    #[test]
    fn only_the_same_version_and_caller_is_unchanged_before_reading() {
        let tags = etags(Some(r#"W/"v3-abc-c0ffee", "v4-xyz-beef""#));
        assert_eq!(
            unchanged_since(&tags, "3", "abc").as_deref(),
            Some(r#""v3-abc-c0ffee""#)
        );
        assert_eq!(unchanged_since(&tags, "3", "xyz"), None, "another caller");
        assert_eq!(
            unchanged_since(&tags, "5", "abc"),
            None,
            "rows written since"
        );
        let any = etags(Some("*"));
        assert_eq!(
            unchanged_since(&any, "5", "abc").as_deref(),
            Some(r#""v5-abc-0""#)
        );
        assert_eq!(unchanged_since(&etags(None), "5", "abc"), None);
    }
}
