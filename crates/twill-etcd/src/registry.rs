use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use twill_model::{LeaseAttrs, LeaseKind, NetworkConfig, SubnetKey, SubnetLease};
use twill_subnet::{HeldLease, LeaseListing, LeaseWatch, MalformedLease, Registry, RegistryError};

use crate::config::read_tls_file;
use crate::error::TLS_HINT;
use crate::{watch, EtcdConfig, EtcdError};

/// Largest response we accept: a listing of 100,000 leases fits.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Capacity of a watch's event channel.
const WATCH_CHANNEL: usize = 1024;

/// What the watch task and the registry share: a client, the key layout and
/// the request counter. Holds no lease state, so a watch task does not keep
/// the registry's leases alive.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config_key: String,
    pub(crate) subnets_prefix: String,
    pub(crate) request_timeout: Duration,
    pub(crate) dial_timeout: Duration,
    pub(crate) requests: Arc<AtomicU64>,
}

/// A client of each endpoint alone, made on first need, for renewals that
/// must not wait on the balanced client. It picks an endpoint at random
/// among those whose connection looks alive, and a member whose packets are
/// dropped (a partitioned host, no reset) looks alive until HTTP/2
/// keep-alive gives up on it: at least 5 s plus its timeout, since etcd
/// refuses pings more often than every 5 s (`--grpc-keepalive-min-time`).
/// A lease of a few seconds' TTL would expire meanwhile. A renewal that
/// times out therefore goes round these, one endpoint after the other.
struct Endpoints {
    urls: Vec<String>,
    options: ConnectOptions,
    clients: Vec<tokio::sync::OnceCell<Client>>,
    /// The endpoint the last renewal went through.
    last_good: std::sync::atomic::AtomicUsize,
}

impl Endpoints {
    fn new(urls: &[String], options: ConnectOptions) -> Self {
        Self {
            urls: urls.to_vec(),
            options,
            clients: urls.iter().map(|_| tokio::sync::OnceCell::new()).collect(),
            last_good: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Endpoint `i`'s own client, connecting it (lazily: no request is
    /// made before the first RPC, unless authentication needs one).
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let url = std::slice::from_ref(&self.urls[i]);
        self.clients[i]
            .get_or_try_init(|| Client::connect(url, Some(self.options.clone())))
            .await
            .cloned()
    }
}

impl Shared {
    /// Runs one counted etcd RPC under the request timeout.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        self.call_within(op, self.request_timeout, fut).await
    }

    /// [`Shared::call`] under a deadline of its own.
    pub(crate) async fn call_within<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(deadline, fut).await {
            Err(_) => Err(EtcdError::Timeout {
                op,
                after: deadline,
            }),
            Ok(Err(source)) => Err(EtcdError::Request { op, source }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix)
    }

    /// Parses one key-value under `subnets/`.
    pub(crate) fn parse_kv(&self, kv: &KeyValue) -> Result<SubnetLease, MalformedLease> {
        let full = String::from_utf8_lossy(kv.key()).into_owned();
        let malformed = |reason: String| MalformedLease {
            key: full.clone(),
            reason,
        };
        let key = self.parse_key(kv.key()).map_err(&malformed)?;
        let attrs = LeaseAttrs::from_slice(kv.value()).map_err(|e| malformed(e.to_string()))?;
        Ok(SubnetLease {
            key,
            attrs,
            kind: kind_of(kv),
            revision: kv.mod_revision(),
        })
    }

    pub(crate) fn parse_key(&self, key: &[u8]) -> Result<SubnetKey, String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
        let name = key
            .strip_prefix(&self.subnets_prefix)
            .ok_or_else(|| format!("key is not under {}", self.subnets_prefix))?;
        name.parse::<SubnetKey>().map_err(|e| e.to_string())
    }

    /// One range request over `subnets/`.
    pub(crate) async fn list(&self) -> Result<LeaseListing, EtcdError> {
        let mut kv = self.kv();
        let resp = self
            .call(
                "range",
                kv.get(
                    self.subnets_prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let mut listing = LeaseListing {
            revision: resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
            ..LeaseListing::default()
        };
        for kv in resp.kvs() {
            match self.parse_kv(kv) {
                Ok(lease) => listing.leases.push(lease),
                Err(m) => {
                    // Reported (once per key and reason) by whoever consumes it.
                    tracing::debug!(key = %m.key, reason = %m.reason, "malformed lease");
                    listing.malformed.push(m);
                }
            }
        }
        tracing::debug!(
            leases = listing.leases.len(),
            malformed = listing.malformed.len(),
            revision = listing.revision,
            "listed leases"
        );
        Ok(listing)
    }
}

fn kind_of(kv: &KeyValue) -> LeaseKind {
    if kv.lease() == 0 {
        LeaseKind::Reservation
    } else {
        LeaseKind::Expiring
    }
}

/// The etcd side of one lease we hold: its etcd lease and keepalive stream.
struct Keeper {
    lease_id: i64,
    ttl: Duration,
    /// Our attributes, to tell whether the key is still ours.
    attrs: LeaseAttrs,
    /// Their encoding, the value we write.
    value: String,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// Outcome of one keepalive round.
enum KeepAlive {
    /// Renewed for this many seconds.
    Renewed(i64),
    /// etcd no longer knows the lease.
    Gone,
}

/// A [`Registry`] over etcd v3, with flannel's keys and values.
///
/// One etcd lease per subnet lease, renewed over one long-lived KeepAlive
/// stream per lease (flannel grants a new etcd lease at every renewal).
/// Cloning is cheap and shares the connection and the held leases; dropping
/// the last clone closes the keepalive streams, so the leases expire after
/// their TTL unless deleted first.
#[derive(Clone)]
pub struct EtcdRegistry {
    shared: Shared,
    config: Arc<EtcdConfig>,
    keepers: Arc<StdMutex<HashMap<SubnetKey, Arc<AsyncMutex<Keeper>>>>>,
    endpoints: Arc<Endpoints>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// The value to store for `attrs`, or the typed error (never an empty value).
fn encode(key: &SubnetKey, attrs: &LeaseAttrs) -> Result<String, RegistryError> {
    attrs
        .to_json()
        .map_err(|source| RegistryError::Encode { key: *key, source })
}

/// Whether the stored value is ours: it parses to our attributes, whatever
/// its bytes (the rule of [`Registry`]: flanneld and older versions of us
/// encode the same attributes differently).
fn holds(kv: &KeyValue, attrs: &LeaseAttrs) -> bool {
    LeaseAttrs::from_slice(kv.value()).is_ok_and(|stored| stored == *attrs)
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl EtcdRegistry {
    /// Connects to etcd and checks that it answers (one range request on
    /// `<prefix>/config`, plus authentication when a user is configured).
    ///
    /// # Errors
    /// [`EtcdError::InvalidSettings`], [`EtcdError::InvalidEndpoint`],
    /// [`EtcdError::TlsFile`] naming an unreadable file, or
    /// [`EtcdError::Connect`] with the cause (a wrong CA shows as
    /// `invalid peer certificate: UnknownIssuer`).
    pub async fn connect(config: EtcdConfig) -> Result<Self, EtcdError> {
        config.validate()?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read_tls_file("CA", ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                t = t.identity(Identity::from_pem(
                    read_tls_file("certificate", cert)?,
                    read_tls_file("key", key)?,
                ));
            }
            opts = opts.with_tls(t);
        }
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            opts = opts.with_user(user.clone(), pass.clone());
        }
        let endpoints = config.endpoints.join(",");
        let uses_tls =
            config.tls.is_some() || config.endpoints.iter().any(|e| e.starts_with("https://"));
        let connect_err = |source: EtcdError| EtcdError::Connect {
            endpoints: endpoints.clone(),
            hint: (uses_tls && source.is_unreachable()).then_some(TLS_HINT),
            source: Box::new(source),
        };
        let requests = Arc::new(AtomicU64::new(0));
        if config.username.is_some() {
            requests.fetch_add(1, Ordering::Relaxed);
        }
        let client = match tokio::time::timeout(
            config.dial_timeout + config.request_timeout,
            Client::connect(&config.endpoints, Some(opts.clone())),
        )
        .await
        {
            Err(_) => {
                return Err(connect_err(EtcdError::Timeout {
                    op: "connect",
                    after: config.dial_timeout,
                }))
            }
            Ok(Err(source)) => {
                return Err(connect_err(EtcdError::Request {
                    op: "connect",
                    source,
                }))
            }
            Ok(Ok(c)) => c,
        };
        let shared = Shared {
            client,
            config_key: config.config_key(),
            subnets_prefix: config.subnets_prefix(),
            request_timeout: config.request_timeout,
            dial_timeout: config.dial_timeout,
            requests,
        };
        // The client connects lazily; probe so that a wrong CA, a refused
        // certificate or a dead endpoint is reported here.
        let mut kv = shared.kv();
        let probe = shared.config_key.clone();
        shared
            .call(
                "range",
                kv.get(probe, Some(GetOptions::new().with_count_only())),
            )
            .await
            .map_err(connect_err)?;
        tracing::info!(endpoints = %endpoints, prefix = %config.prefix, "connected to etcd");
        Ok(EtcdRegistry {
            shared,
            endpoints: Arc::new(Endpoints::new(&config.endpoints, opts)),
            config: Arc::new(config),
            keepers: Arc::new(StdMutex::new(HashMap::new())),
        })
    }

    /// The configuration this registry was connected with.
    #[must_use]
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// How many etcd RPCs (unary requests, watch creations, keepalive
    /// requests) this registry and its clones have made.
    #[must_use]
    pub fn requests_made(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The underlying etcd client, for tools and tests.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Writes `<prefix>/config` after validating it.
    ///
    /// # Errors
    /// [`RegistryError::InvalidConfig`] when `json` is not a valid flannel
    /// config, or [`RegistryError::Unavailable`].
    pub async fn put_config(&self, json: &str) -> Result<(), RegistryError> {
        NetworkConfig::parse(json).map_err(|source| RegistryError::InvalidConfig {
            key: self.shared.config_key.clone(),
            source,
        })?;
        let mut kv = self.shared.kv();
        self.shared
            .call("put", kv.put(self.shared.config_key.as_bytes(), json, None))
            .await?;
        Ok(())
    }

    /// Reads and validates `<prefix>/config`.
    ///
    /// # Errors
    /// [`RegistryError::ConfigNotFound`], [`RegistryError::InvalidConfig`],
    /// or [`RegistryError::Unavailable`].
    pub async fn read_config(&self) -> Result<NetworkConfig, RegistryError> {
        let key = &self.shared.config_key;
        let mut kv = self.shared.kv();
        let resp = self
            .shared
            .call("range", kv.get(key.as_bytes(), None))
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(RegistryError::ConfigNotFound { key: key.clone() });
        };
        NetworkConfig::parse_slice(kv.value()).map_err(|source| RegistryError::InvalidConfig {
            key: key.clone(),
            source,
        })
    }

    /// Lists every lease in one range request.
    ///
    /// # Errors
    /// [`RegistryError::Unavailable`].
    pub async fn list(&self) -> Result<LeaseListing, RegistryError> {
        Ok(self.shared.list().await?)
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let mut lc = self.shared.client.lease_client();
        let resp = self
            .shared
            .call("lease grant", lc.grant(ttl_secs(ttl), None))
            .await?;
        if !resp.error().is_empty() {
            return Err(EtcdError::Refused {
                op: "lease grant",
                reason: resp.error().to_string(),
            });
        }
        Ok((resp.id(), secs(resp.ttl())))
    }

    async fn revoke_quietly(&self, lease_id: i64) {
        let mut lc = self.shared.client.lease_client();
        if let Err(e) = self.shared.call("lease revoke", lc.revoke(lease_id)).await {
            tracing::debug!(lease_id, error = %e, "revoking an unused etcd lease failed");
        }
    }

    /// Creates the key if absent, attached to `lease_id` (0: no lease).
    /// Returns the revision of the write, or `None` when the key exists.
    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
        lease_id: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let opts = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        let txn = Txn::new()
            .when([Compare::version(path, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(path, value, opts)]);
        let mut kv = self.shared.kv();
        let resp = self.shared.call("txn", kv.txn(txn)).await?;
        Ok(resp.succeeded().then(|| {
            resp.header()
                .map_or(0, etcd_client::ResponseHeader::revision)
        }))
    }

    /// Creates a lease; see [`Registry::create_lease`].
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when the key exists, or
    /// [`RegistryError::Unavailable`].
    pub async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<HeldLease, RegistryError> {
        let path = self.shared.lease_key(key);
        let value = encode(key, attrs)?;
        let (lease_id, granted) = match ttl {
            Some(t) => {
                let (id, g) = self.grant(t).await?;
                (id, Some(g))
            }
            None => (0, None),
        };
        let written = match self.put_if_absent(&path, &value, lease_id).await {
            Ok(w) => w,
            Err(e) => {
                if lease_id != 0 {
                    self.revoke_quietly(lease_id).await;
                }
                return Err(e.into());
            }
        };
        let Some(revision) = written else {
            if lease_id != 0 {
                self.revoke_quietly(lease_id).await;
            }
            return Err(RegistryError::Conflict { key: *key });
        };
        tracing::info!(subnet = %key, lease_id, ttl = ?granted, "created lease");
        if let Some(ttl) = granted {
            let keeper = Keeper {
                lease_id,
                ttl,
                attrs: attrs.clone(),
                value,
                stream: None,
            };
            self.keepers_lock()
                .insert(*key, Arc::new(AsyncMutex::new(keeper)));
        }
        Ok(HeldLease::new(*key, attrs.clone(), granted, revision))
    }

    fn keepers_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SubnetKey, Arc<AsyncMutex<Keeper>>>> {
        self.keepers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn get_kv(&self, path: &str) -> Result<Option<KeyValue>, EtcdError> {
        let mut kv = self.shared.kv();
        let mut resp = self.shared.call("range", kv.get(path, None)).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// How long one step of a renewal may wait (a round on the stream, or
    /// opening one on an endpoint) before trying the next endpoint: a tenth
    /// of the TTL, so a renewal goes round three endpoints, a dead one
    /// among them, well inside the third of the TTL left to it
    /// (`CoreConfig::renew_after`); at most the request timeout.
    fn renew_step(&self, ttl: Duration) -> Duration {
        (ttl / 10)
            .max(Duration::from_millis(400))
            .min(self.shared.request_timeout)
    }

    /// One keepalive round on the keeper's stream, opening it if needed
    /// (opening sends the first keepalive). A round that fails or times out
    /// opens a new stream, on the balanced client the first time, then on
    /// each endpoint in turn ([`Endpoints`]).
    async fn keep_alive_once(&self, k: &mut Keeper) -> Result<KeepAlive, EtcdError> {
        let step = self.renew_step(k.ttl);
        let mut stalled = false;
        if let Some((keeper, stream)) = k.stream.as_mut() {
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            let round = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(step, round).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => return Ok(KeepAlive::Renewed(resp.ttl())),
                Ok(Ok(Some(_))) => return Ok(KeepAlive::Gone),
                Ok(Ok(None)) => tracing::debug!(lease_id = k.lease_id, "keepalive stream ended"),
                Ok(Err(e)) => {
                    tracing::debug!(lease_id = k.lease_id, error = %crate::error::describe(&e), "keepalive stream failed");
                }
                Err(_) => {
                    stalled = true;
                    tracing::debug!(lease_id = k.lease_id, after = ?step, "keepalive timed out");
                }
            }
            k.stream = None;
        }
        let n = self.endpoints.urls.len();
        if n == 1 || !stalled {
            match self.open_keep_alive(None, k, step).await {
                Err(e) if n > 1 && e.is_transient() => {
                    tracing::debug!(lease_id = k.lease_id, error = %e, "keepalive: trying each endpoint");
                }
                done => return done,
            }
        }
        // Round the endpoints, from the last one that worked.
        let first = self.endpoints.last_good.load(Ordering::Relaxed);
        let mut last = None;
        for i in (0..n).map(|j| (first + j) % n) {
            match self.open_keep_alive(Some(i), k, step).await {
                Err(e) if e.is_transient() => {
                    tracing::debug!(lease_id = k.lease_id, endpoint = %self.endpoints.urls[i], error = %e, "keepalive: next endpoint");
                    last = Some(e);
                }
                done => {
                    self.endpoints.last_good.store(i, Ordering::Relaxed);
                    return done;
                }
            }
        }
        Err(last.unwrap_or(EtcdError::Timeout {
            op: "lease keepalive",
            after: step,
        }))
    }

    /// Opens the keeper's stream on endpoint `at` (`None`: the balanced
    /// client) within `step`; its first response renews the lease.
    async fn open_keep_alive(
        &self,
        at: Option<usize>,
        k: &mut Keeper,
        step: Duration,
    ) -> Result<KeepAlive, EtcdError> {
        let lease_id = k.lease_id;
        let open = async {
            let client = match at {
                None => self.shared.client.clone(),
                Some(i) => self.endpoints.client(i).await?,
            };
            client.lease_client().keep_alive(lease_id).await
        };
        match self.shared.call_within("lease keepalive", step, open).await {
            Ok((keeper, stream)) => {
                k.stream = Some((keeper, stream));
                // keep_alive() consumed the first response after checking
                // its TTL was positive: the lease was renewed for its TTL.
                Ok(KeepAlive::Renewed(ttl_secs(k.ttl)))
            }
            // The client turns etcd's answer for an unknown lease (a
            // keepalive response with TTL 0, no gRPC error) into this
            // variant, with nothing but a message; the variant's only other
            // source, a send on the request channel it just created, cannot
            // fail. So the variant, not its text, says "gone".
            Err(EtcdError::Request {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => Ok(KeepAlive::Gone),
            Err(e) if e.grpc_code() == Some(tonic::Code::NotFound) => Ok(KeepAlive::Gone),
            Err(e) => Err(e),
        }
    }

    /// The etcd lease is gone: grant a new one and re-attach our key, only
    /// if it is absent or still holds our attributes (unchanged since we
    /// read it).
    async fn recreate(&self, key: &SubnetKey, k: &mut Keeper) -> Result<i64, RegistryError> {
        let path = self.shared.lease_key(key);
        let current = self.get_kv(&path).await?;
        if current.as_ref().is_some_and(|kv| !holds(kv, &k.attrs)) {
            return Err(RegistryError::Conflict { key: *key });
        }
        let (lease_id, granted) = self.grant(k.ttl).await?;
        let written = match &current {
            Some(kv) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        path.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(
                        path.as_str(),
                        k.value.as_str(),
                        Some(PutOptions::new().with_lease(lease_id)),
                    )]);
                let mut kvc = self.shared.kv();
                self.shared.call("txn", kvc.txn(txn)).await.map(|resp| {
                    resp.succeeded().then(|| {
                        resp.header()
                            .map_or(0, etcd_client::ResponseHeader::revision)
                    })
                })
            }
            None => self.put_if_absent(&path, &k.value, lease_id).await,
        };
        let revision = match written {
            Ok(Some(rev)) => rev,
            // Changed since we read it: someone else's now.
            Ok(None) => {
                self.revoke_quietly(lease_id).await;
                return Err(RegistryError::Conflict { key: *key });
            }
            Err(e) => {
                self.revoke_quietly(lease_id).await;
                return Err(e.into());
            }
        };
        tracing::warn!(subnet = %key, old = k.lease_id, new = lease_id, "etcd lease was lost; re-created it");
        k.lease_id = lease_id;
        k.ttl = granted;
        k.stream = None;
        Ok(revision)
    }

    /// The keeper for a lease we did not create in this process (e.g. after
    /// a restart): adopt the etcd lease the key holds if it holds our value.
    async fn adopt(
        &self,
        held: &HeldLease,
        ttl: Duration,
    ) -> Result<Option<Keeper>, RegistryError> {
        let key = &held.lease.key;
        let value = encode(key, &held.lease.attrs)?;
        match self.get_kv(&self.shared.lease_key(key)).await? {
            Some(kv) if !holds(&kv, &held.lease.attrs) => {
                Err(RegistryError::Conflict { key: *key })
            }
            Some(kv) if kv.lease() == 0 => Ok(None),
            Some(kv) => Ok(Some(Keeper {
                lease_id: kv.lease(),
                ttl,
                attrs: held.lease.attrs.clone(),
                value,
                stream: None,
            })),
            // Absent: recreate below with a dead lease id.
            None => Ok(Some(Keeper {
                lease_id: 0,
                ttl,
                attrs: held.lease.attrs.clone(),
                value,
                stream: None,
            })),
        }
    }

    /// Renews a lease; see [`Registry::renew_lease`].
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when another value took the key,
    /// [`RegistryError::LeaseNotFound`] for a vanished reservation, or
    /// [`RegistryError::Unavailable`].
    pub async fn renew(&self, held: &HeldLease) -> Result<HeldLease, RegistryError> {
        let key = held.lease.key;
        let existing = self.keepers_lock().get(&key).cloned();
        let entry = match existing {
            Some(e) => e,
            None => {
                // No TTL: a reservation, nothing to keep alive.
                let Some(ttl) = held.ttl else {
                    return match self.get_kv(&self.shared.lease_key(&key)).await? {
                        Some(_) => Ok(held.clone()),
                        None => Err(RegistryError::LeaseNotFound { key }),
                    };
                };
                match self.adopt(held, ttl).await? {
                    None => {
                        let mut h = held.clone();
                        h.lease.kind = LeaseKind::Reservation;
                        h.ttl = None;
                        return Ok(h);
                    }
                    Some(k) => {
                        let entry = Arc::new(AsyncMutex::new(k));
                        self.keepers_lock()
                            .entry(key)
                            .or_insert_with(|| entry.clone())
                            .clone()
                    }
                }
            }
        };
        let mut k = entry.lock().await;
        // The etcd lease we keep alive carries other attributes (the key was
        // deleted and created again by someone else through this registry).
        if k.attrs != held.lease.attrs {
            return Err(RegistryError::Conflict { key });
        }
        let mut revision = held.lease.revision;
        let outcome = if k.lease_id == 0 {
            KeepAlive::Gone
        } else {
            self.keep_alive_once(&mut k).await?
        };
        let ttl = match outcome {
            KeepAlive::Renewed(t) => secs(t),
            KeepAlive::Gone => {
                revision = self.recreate(&key, &mut k).await?;
                k.ttl
            }
        };
        tracing::debug!(subnet = %key, lease_id = k.lease_id, ?ttl, "renewed lease");
        let mut h = held.clone();
        h.lease.revision = revision;
        h.lease.kind = LeaseKind::Expiring;
        h.ttl = Some(ttl);
        Ok(h)
    }

    /// Replaces our lease's value, keeping its etcd lease; see
    /// [`Registry::update_lease`].
    ///
    /// # Errors
    /// [`RegistryError::LeaseNotFound`] when the key is gone,
    /// [`RegistryError::Conflict`] when it holds other attributes, or
    /// [`RegistryError::Unavailable`].
    pub async fn update(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<HeldLease, RegistryError> {
        let key = held.lease.key;
        let path = self.shared.lease_key(&key);
        let new = encode(&key, attrs)?;
        let Some(current) = self.get_kv(&path).await? else {
            return Err(RegistryError::LeaseNotFound { key });
        };
        if !holds(&current, &held.lease.attrs) {
            return Err(RegistryError::Conflict { key });
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                path.as_str(),
                CompareOp::Equal,
                current.mod_revision(),
            )])
            .and_then([TxnOp::put(
                path.as_str(),
                new.as_str(),
                Some(PutOptions::new().with_ignore_lease()),
            )])
            .or_else([TxnOp::get(path.as_str(), None)]);
        let mut kv = self.shared.kv();
        let resp = self.shared.call("txn", kv.txn(txn)).await?;
        if !resp.succeeded() {
            // Changed between the read and the write.
            let exists = resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(g) => !g.kvs().is_empty(),
                _ => false,
            });
            return Err(if exists {
                RegistryError::Conflict { key }
            } else {
                RegistryError::LeaseNotFound { key }
            });
        }
        let existing = self.keepers_lock().get(&key).cloned();
        if let Some(entry) = existing {
            let mut k = entry.lock().await;
            k.value.clone_from(&new);
            k.attrs = attrs.clone();
        }
        let mut h = held.clone();
        h.lease.attrs = attrs.clone();
        h.lease.revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        Ok(h)
    }

    /// Puts our value back on our key, overwritten in place since
    /// `revision`; see [`Registry::restore_lease`]. One transaction: the key
    /// is unchanged since `revision` and still attached to the etcd lease
    /// we keep alive for it (an `etcdctl put --ignore-lease` keeps it; a
    /// plain put, or a delete and a put, does not).
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when the key is not ours any more (or we
    /// hold no etcd lease for it), or [`RegistryError::Unavailable`].
    pub async fn restore(
        &self,
        held: &HeldLease,
        revision: i64,
    ) -> Result<HeldLease, RegistryError> {
        let key = held.lease.key;
        let existing = self.keepers_lock().get(&key).cloned();
        let Some(entry) = existing else {
            return Err(RegistryError::Conflict { key });
        };
        let k = entry.lock().await;
        if k.lease_id == 0 {
            return Err(RegistryError::Conflict { key });
        }
        let path = self.shared.lease_key(&key);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(path.as_str(), CompareOp::Equal, revision),
                Compare::lease(path.as_str(), CompareOp::Equal, k.lease_id),
            ])
            .and_then([TxnOp::put(
                path.as_str(),
                k.value.as_str(),
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        let mut kv = self.shared.kv();
        let resp = self.shared.call("txn", kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(RegistryError::Conflict { key });
        }
        let mut h = held.clone();
        h.lease.revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        Ok(h)
    }

    /// Deletes a lease and revokes its etcd lease if we hold it.
    ///
    /// # Errors
    /// [`RegistryError::LeaseNotFound`] when there was nothing to delete, or
    /// [`RegistryError::Unavailable`].
    pub async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let path = self.shared.lease_key(key);
        let mut kv = self.shared.kv();
        let resp = self.shared.call("delete", kv.delete(path, None)).await?;
        let removed = self.keepers_lock().remove(key);
        if let Some(entry) = removed {
            let lease_id = entry.lock().await.lease_id;
            if lease_id != 0 {
                self.revoke_quietly(lease_id).await;
            }
        }
        if resp.deleted() == 0 {
            return Err(RegistryError::LeaseNotFound { key: *key });
        }
        tracing::info!(subnet = %key, "deleted lease");
        Ok(())
    }

    /// Starts a watch task; see [`Registry::watch_leases`].
    #[must_use]
    pub fn watch(&self, from_revision: i64) -> LeaseWatch {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(watch::run(self.shared.clone(), from_revision, tx));
        LeaseWatch::new(rx)
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn config_key(&self) -> String {
        self.config().config_key()
    }

    async fn get_config(&self) -> Result<NetworkConfig, RegistryError> {
        Ok(self.read_config().await?)
    }

    async fn list_leases(&self) -> Result<LeaseListing, RegistryError> {
        Ok(self.list().await?)
    }

    async fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<HeldLease, RegistryError> {
        Ok(self.create(key, attrs, ttl).await?)
    }

    async fn renew_lease(&self, held: &HeldLease) -> Result<HeldLease, RegistryError> {
        Ok(self.renew(held).await?)
    }

    async fn update_lease(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<HeldLease, RegistryError> {
        Ok(self.update(held, attrs).await?)
    }

    async fn restore_lease(
        &self,
        held: &HeldLease,
        revision: i64,
    ) -> Result<HeldLease, RegistryError> {
        Ok(self.restore(held, revision).await?)
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        Ok(self.delete(key).await?)
    }

    async fn watch_leases(&self, from_revision: i64) -> Result<LeaseWatch, RegistryError> {
        Ok(self.watch(from_revision))
    }
}
