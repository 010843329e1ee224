//! Asking the cluster how transactions stand: `FindCoordinator` for each transactional id's
//! coordinator, then `DescribeTransactions` of it. This is how the front learns that a
//! transaction holding admitted records ended without an `EndTxn` through this front — Flink's
//! committer may commit it from another TaskManager, through that pod's sidecar, or after a
//! restore with a producer id this front never saw (see `transactions`, which decides what an
//! answer means; this module only asks).
//!
//! The front's own connections, not a client's: opened with the same security as every
//! upstream connection, one per broker asked, kept between rounds and dropped on any error.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use thiserror::Error;

use super::transactions::Described;
use super::upstream::{self, ConnectError, Security, Upstream};

/// `FindCoordinator` v4: a batch of keys (Kafka 3.0 and later, like `DescribeTransactions`).
const FIND_COORDINATOR_VERSION: i16 = 4;
/// `FindCoordinator` key type of a transactional id.
const TRANSACTION_KEY: i8 = 1;
/// How long one question may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections kept (one per broker asked); a cluster with more coordinators than this has
/// its connections reopened as needed.
const MAX_CONNECTIONS: usize = 32;

/// Why a question could not be asked.
#[derive(Debug, Error)]
pub enum AskError {
    /// No broker could be reached.
    #[error("cannot reach {address}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The broker closed the connection or answered garbage.
    #[error("{api:?} to {address} failed")]
    Call {
        /// The request.
        api: ApiKey,
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The front has no bootstrap server to ask.
    #[error("no bootstrap server to ask")]
    NoBootstrap,
    /// The broker did not answer in time.
    #[error("{api:?} to {address} got no answer within {ASK_TIMEOUT:?}")]
    Timeout {
        /// The request.
        api: ApiKey,
        /// Where.
        address: String,
    },
}

/// Asks the cluster about transactional ids.
pub struct Asker {
    bootstrap: Vec<String>,
    security: Security,
    connections: HashMap<String, Upstream>,
    correlation: i32,
}

impl Asker {
    /// Asks the cluster reached at `bootstrap` with `security`.
    pub fn new(bootstrap: Vec<String>, security: Security) -> Self {
        Self {
            bootstrap,
            security,
            connections: HashMap::new(),
            correlation: 0,
        }
    }

    /// What the cluster says of each of `ids`, by id. An id whose coordinator is not known
    /// right now (moving, loading) is left out: it is asked again next round.
    pub async fn describe(
        &mut self,
        ids: &[String],
    ) -> Result<HashMap<String, Described>, AskError> {
        let find = FindCoordinatorRequest::default()
            .with_key_type(TRANSACTION_KEY)
            .with_coordinator_keys(ids.iter().map(|id| StrBytes::from(id.clone())).collect());
        let found: FindCoordinatorResponse = self
            .bootstrap_call(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &find)
            .await?;
        let mut by_broker: HashMap<String, Vec<String>> = HashMap::new();
        for c in found.coordinators.iter().filter(|c| c.error_code == 0) {
            by_broker
                .entry(format!("{}:{}", c.host, c.port))
                .or_default()
                .push(c.key.to_string());
        }
        let mut answers = HashMap::new();
        for (address, ids) in by_broker {
            let request = DescribeTransactionsRequest::default().with_transactional_ids(
                ids.into_iter()
                    .map(|id| TransactionalId(StrBytes::from(id)))
                    .collect(),
            );
            let r: DescribeTransactionsResponse = self
                .call(&address, ApiKey::DescribeTransactions, 0, &request)
                .await?;
            for s in r.transaction_states {
                answers.insert(
                    s.transactional_id.0.to_string(),
                    Described {
                        error_code: s.error_code,
                        state: s.transaction_state.to_string(),
                        producer: (s.producer_id.0, s.producer_epoch),
                    },
                );
            }
        }
        Ok(answers)
    }

    /// Asks the first bootstrap server that answers.
    async fn bootstrap_call<Q, R>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Q,
    ) -> Result<R, AskError>
    where
        Q: kafka_protocol::protocol::Encodable,
        R: kafka_protocol::protocol::Decodable,
    {
        let mut last = None;
        for address in self.bootstrap.clone() {
            match self.call(&address, api, version, body).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(AskError::NoBootstrap))
    }

    async fn call<Q, R>(
        &mut self,
        address: &str,
        api: ApiKey,
        version: i16,
        body: &Q,
    ) -> Result<R, AskError>
    where
        Q: kafka_protocol::protocol::Encodable,
        R: kafka_protocol::protocol::Decodable,
    {
        if self.connections.get(address).is_some_and(Upstream::expired) {
            self.connections.remove(address);
        }
        if !self.connections.contains_key(address) {
            let up = upstream::connect(address, &self.security)
                .await
                .map_err(|source| AskError::Connect {
                    address: address.into(),
                    source,
                })?;
            if self.connections.len() >= MAX_CONNECTIONS {
                self.connections.clear();
            }
            self.connections.insert(address.to_owned(), up);
        }
        let up = self.connections.get_mut(address).expect("connected above");
        self.correlation = self.correlation.wrapping_add(1);
        let asked = tokio::time::timeout(
            ASK_TIMEOUT,
            upstream::call(
                up,
                api,
                version,
                self.correlation,
                body,
                "transaction question",
            ),
        )
        .await;
        let failed = match asked {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(source)) => AskError::Call {
                api,
                address: address.into(),
                source,
            },
            Err(_) => AskError::Timeout {
                api,
                address: address.into(),
            },
        };
        self.connections.remove(address);
        Err(failed)
    }
}
