//! Tenant networks and how their containers reach the scheduler: a container cannot reach the
//! host's loopback, so a loopback scheduler URL is relayed from the network's gateway.

use super::*;

/// A tenant network and where its containers reach the host.
#[derive(Debug, Clone)]
pub(super) struct Net {
    pub(super) name: String,
    pub(super) gateway: IpAddr,
}

pub(super) struct Relay {
    pub(super) url: String,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
}

/// Accepts agents' connections on the gateway and pipes each to the scheduler.
pub(super) async fn relay(listener: tokio::net::TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "docker relay: the scheduler does not answer")
                }
            }
        });
    }
}

/// The parts of an http(s) URL the relay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParsedUrl {
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// Everything after the authority, from its `/` (may be empty).
    pub(super) path: String,
}

impl ParsedUrl {
    pub(super) fn parse(url: &str) -> Option<ParsedUrl> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), default_port),
            }
        };
        Some(ParsedUrl {
            scheme: scheme.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// Whether a container could not reach this host as named: the host's loopback.
    pub(super) fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
    }

    /// Where the relay connects on the host.
    pub(super) fn target(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() => format!("127.0.0.1:{}", self.port),
            Ok(IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            Ok(a) => format!("{a}:{}", self.port),
            Err(_) => format!("127.0.0.1:{}", self.port),
        }
    }
}

impl Inner {
    /// The tenant's network, created if missing. The caller holds the tenant's lock.
    pub(super) async fn ensure_network(&self, tenant: &str) -> Result<Net, ProviderError> {
        let d = self.client().await?;
        let name = network_name(&self.cfg.namespace, tenant);
        let inspect = |d: Docker, name: String| async move {
            d.inspect_network(&name, None::<InspectNetworkOptions>)
                .await
        };
        let found = match inspect(d.clone(), name.clone()).await {
            Ok(n) => n,
            Err(e) if status_of(&e) == Some(404) => {
                let mut labels = HashMap::new();
                labels.insert(LABEL_NAMESPACE.to_string(), self.cfg.namespace.clone());
                labels.insert(LABEL_TENANT.to_string(), tenant.to_string());
                let mut options = HashMap::new();
                options.insert(
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "true".to_string(),
                );
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    internal: Some(self.cfg.internal),
                    labels: Some(labels),
                    options: Some(options),
                    ..Default::default()
                };
                match d.create_network(req).await {
                    Ok(_) => {}
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(to_provider_error(e)),
                }
                inspect(d.clone(), name.clone())
                    .await
                    .map_err(to_provider_error)?
            }
            Err(e) => return Err(to_provider_error(e)),
        };
        let gateway = found
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.iter().find_map(|c| c.gateway.clone()))
            .and_then(|g| g.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                ProviderError::Permanent(format!("network {name} has no gateway address"))
            })?;
        Ok(Net { name, gateway })
    }

    /// The URL the agent on `net` reaches the scheduler at: `url` itself unless it names the
    /// host's loopback, else the network's gateway, relayed to the loopback when needed.
    pub(super) async fn agent_url(&self, net: &Net, url: &str) -> Result<String, ProviderError> {
        let Some(parsed) = ParsedUrl::parse(url) else {
            return Ok(url.to_string());
        };
        if !parsed.is_local() {
            return Ok(url.to_string());
        }
        if let Some(r) = self.book().relays.get(&net.name) {
            return Ok(r.url.clone());
        }
        let gw = match net.gateway {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        let agent_url = format!("{}://{gw}:{}{}", parsed.scheme, parsed.port, parsed.path);
        let target = parsed.target();
        let task =
            match tokio::net::TcpListener::bind(SocketAddr::new(net.gateway, parsed.port)).await {
                Ok(listener) => Some(tokio::spawn(relay(listener, target))),
                // The scheduler (on 0.0.0.0) already answers on the gateway.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
                Err(e) => {
                    return Err(ProviderError::Permanent(format!(
                        "cannot listen on {gw}:{} to relay sandboxes to the scheduler: {e}",
                        parsed.port
                    )));
                }
            };
        tracing::info!(network = %net.name, url = %agent_url, relayed = task.is_some(), "docker: sandboxes reach the scheduler through their network's gateway");
        self.book().relays.insert(
            net.name.clone(),
            Relay {
                url: agent_url.clone(),
                task,
            },
        );
        Ok(agent_url)
    }

    pub(super) fn drop_relay(&self, network: &str) {
        if let Some(r) = self.book().relays.remove(network)
            && let Some(t) = r.task
        {
            t.abort();
        }
    }
}
