//! Clients must only ever see the front: every broker address in a response is rewritten to a
//! local port of this sidecar, one per upstream broker (node id), bound the first time the
//! broker is named. A connection to that port is proxied to that broker, so a client's
//! per-leader connections keep going to the right leader through the gate.
//!
//! Port per broker rather than one port for all: with one port the front would have to split
//! every Produce by partition leader and answer as several brokers at once; with a port per
//! node the client does the routing, as it does against a real cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kafka_protocol::messages::{
    DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse, ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// Starts serving a newly bound broker port: `(listener, node id)`.
pub type Serve = Arc<dyn Fn(TcpListener, i32) + Send + Sync>;

/// Upstream brokers and the local ports standing in for them.
pub struct BrokerMap {
    bind_ip: IpAddr,
    nodes: Mutex<BTreeMap<i32, (String, SocketAddr)>>,
    serve: Serve,
}

impl BrokerMap {
    /// A map whose broker ports are bound on `bind_ip` (the front's own address) and served by
    /// `serve`.
    pub fn new(bind_ip: IpAddr, serve: Serve) -> Self {
        Self {
            bind_ip,
            nodes: Mutex::new(BTreeMap::new()),
            serve,
        }
    }

    /// The upstream `host:port` of `node`, as last named by the cluster.
    pub async fn upstream(&self, node: i32) -> Option<String> {
        self.nodes.lock().await.get(&node).map(|(u, _)| u.clone())
    }

    /// The local address standing in for `node` at `host:port`, bound on first sight.
    pub async fn local(&self, node: i32, host: &str, port: i32) -> std::io::Result<SocketAddr> {
        let upstream = format!("{host}:{port}");
        let mut nodes = self.nodes.lock().await;
        if let Some((u, local)) = nodes.get_mut(&node) {
            // A broker that moved keeps its local port; new connections go to the new address.
            *u = upstream;
            return Ok(*local);
        }
        let listener = TcpListener::bind((self.bind_ip, 0)).await?;
        let local = listener.local_addr()?;
        tracing::info!(node, %upstream, %local, "Kafka front: serving an upstream broker on a local port");
        nodes.insert(node, (upstream, local));
        (self.serve)(listener, node);
        Ok(local)
    }

    async fn rewrite(&self, node: i32, host: &mut StrBytes, port: &mut i32) -> std::io::Result<()> {
        let local = self.local(node, host.as_str(), *port).await?;
        *host = StrBytes::from_string(local.ip().to_string());
        *port = i32::from(local.port());
        Ok(())
    }
}

/// A response that names brokers, which the front rewrites to its own ports.
pub trait NamesBrokers {
    /// Rewrites every broker address in it (binding local ports for new brokers).
    fn rewrite(
        &mut self,
        map: &BrokerMap,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl NamesBrokers for MetadataResponse {
    async fn rewrite(&mut self, map: &BrokerMap) -> std::io::Result<()> {
        for b in &mut self.brokers {
            map.rewrite(b.node_id.0, &mut b.host, &mut b.port).await?;
        }
        Ok(())
    }
}

impl NamesBrokers for FindCoordinatorResponse {
    /// The single node (v0–3) or every coordinator (v4+). A v4+ answer decodes with the
    /// top-level fields at their defaults (node 0, no host), which must stay so: v4+ cannot
    /// encode them (found by Flink's EXACTLY_ONCE sink, kafka-clients 4.2).
    async fn rewrite(&mut self, map: &BrokerMap) -> std::io::Result<()> {
        if self.error_code == 0 && self.node_id.0 >= 0 && !self.host.is_empty() {
            map.rewrite(self.node_id.0, &mut self.host, &mut self.port)
                .await?;
        }
        for c in &mut self.coordinators {
            if c.error_code == 0 && c.node_id.0 >= 0 {
                map.rewrite(c.node_id.0, &mut c.host, &mut c.port).await?;
            }
        }
        Ok(())
    }
}

impl NamesBrokers for DescribeClusterResponse {
    async fn rewrite(&mut self, map: &BrokerMap) -> std::io::Result<()> {
        for b in &mut self.brokers {
            map.rewrite(b.broker_id.0, &mut b.host, &mut b.port).await?;
        }
        Ok(())
    }
}

impl NamesBrokers for ProduceResponse {
    /// The new leaders' endpoints (KIP-951, v10+).
    async fn rewrite(&mut self, map: &BrokerMap) -> std::io::Result<()> {
        for e in &mut self.node_endpoints {
            map.rewrite(e.node_id.0, &mut e.host, &mut e.port).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;

    #[tokio::test]
    async fn every_broker_gets_one_local_port_and_keeps_it() {
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = served.clone();
        let map = BrokerMap::new(
            "127.0.0.1".parse().unwrap(),
            Arc::new(move |_l, node| s.lock().unwrap().push(node)),
        );
        let broker = |id: i32, host: &str| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host.into()))
                .with_port(9092)
        };
        let mut r = MetadataResponse::default();
        r.brokers = vec![broker(1, "kafka-1.internal"), broker(2, "kafka-2.internal")];
        r.rewrite(&map).await.unwrap();
        let first: Vec<(String, i32)> = r
            .brokers
            .iter()
            .map(|b| (b.host.to_string(), b.port))
            .collect();
        assert!(first.iter().all(|(h, _)| h == "127.0.0.1"), "{first:?}");
        assert_ne!(first[0].1, first[1].1);
        // Named again (the same or a moved broker): the same local port, no new listener.
        let mut again = MetadataResponse::default();
        again.brokers = vec![broker(2, "kafka-2b.internal")];
        again.rewrite(&map).await.unwrap();
        assert_eq!(again.brokers[0].port, first[1].1);
        assert_eq!(*served.lock().unwrap(), [1, 2]);
        assert_eq!(
            map.upstream(2).await.as_deref(),
            Some("kafka-2b.internal:9092")
        );
    }

    /// A v4+ FindCoordinator answer (batched coordinators) still encodes at v4 and v5 after the
    /// rewrite, its coordinator pointing at the front; a v3 one has its single node rewritten.
    #[tokio::test]
    async fn find_coordinator_answers_encode_at_their_version_after_the_rewrite() {
        use kafka_protocol::messages::find_coordinator_response::Coordinator;
        use kafka_protocol::protocol::{Decodable as _, Encodable as _};
        let map = BrokerMap::new("127.0.0.1".parse().unwrap(), Arc::new(|_l, _n| {}));
        for version in [4, 5] {
            let r = FindCoordinatorResponse::default().with_coordinators(vec![
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("sluice-orders-green-0-1"))
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("kafka-1.internal"))
                    .with_port(9092),
            ]);
            let mut wire = bytes::BytesMut::new();
            r.encode(&mut wire, version).unwrap();
            let mut decoded = FindCoordinatorResponse::decode(&mut wire.freeze(), version).unwrap();
            decoded.rewrite(&map).await.unwrap();
            let mut out = bytes::BytesMut::new();
            decoded
                .encode(&mut out, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(decoded.coordinators[0].host.as_str(), "127.0.0.1");
        }
        let mut v3 = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("kafka-1.internal"))
            .with_port(9092);
        v3.rewrite(&map).await.unwrap();
        assert_eq!(v3.host.as_str(), "127.0.0.1");
        let mut out = bytes::BytesMut::new();
        v3.encode(&mut out, 3).unwrap();
    }
}
