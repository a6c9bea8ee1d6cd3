//! A secure-aggregation round, the client's side: after the model is in hand the session
//! exchanges [`SecAggRequest`]s with the coordinator instead of uploading:
//!
//! ```text
//! poll → wait … → setup: make the SecAgg+ client, send its keys → neighbours' keys: send sealed
//! shares → incoming shares: train, clip, noise, mask [w·Δ, w], send → unmask request: send
//! the asked shares → done → check in again
//! ```
//!
//! Everything the SecAgg+ client draws (keys, seeds, shares, stochastic rounding) comes from the
//! round's `secagg` stream: seeded in simulation, the platform CSPRNG in browsers. A message the
//! client cannot take loses the round (a problem notice), never the session.

use std::sync::Arc;

use super::{
    AFTER_REFUSAL_MS, Action, Assignment, BACKOFF_MS, Failure, Notice, Phase, RoundReport, Session, SessionError,
    State, Streams, Training, UPLOAD_TRIES, phase,
};
use crate::params::Params;
use crate::pipeline;
use crate::protocol::{SecAggAnswer, SecAggRequest, SecAggTerms};
use crate::rng::Rng;
use crate::secagg::{IncomingShares, SecAggClient, ToClient, ToServer};
use crate::train::TrainStats;

/// A secure round between trainings: the SecAgg+ client and the request in flight.
pub(super) struct Exchange {
    job: Assignment,
    global: Arc<Params>,
    terms: SecAggTerms,
    /// Training's generator, until training starts.
    training: Option<Rng>,
    streams: Streams,
    client: Option<SecAggClient>,
    /// The request in flight: sent again after a transient failure; a poll once answered.
    request: SecAggRequest,
    sent_at_ms: f64,
    tries: u32,
    /// The round's report, told once the masked update is taken.
    report: Option<RoundReport>,
}

/// What a secure round keeps while the client trains.
pub(super) struct SecureTraining {
    terms: SecAggTerms,
    client: SecAggClient,
    shares: IncomingShares,
    /// The exchange's request to fall back to (its identity and long-poll wait).
    request: SecAggRequest,
}

/// A finished local training of a secure round, before masking.
pub(super) struct Trained {
    pub job: Assignment,
    pub global: Arc<Params>,
    pub streams: Streams,
    pub delta: Params,
    pub stats: TrainStats,
    pub train_ms: f64,
}

impl Session {
    /// The model is in hand: ask the coordinator for the cohort's setup.
    pub(super) fn join_cohort(
        &mut self,
        job: Assignment,
        global: Arc<Params>,
        training: Rng,
        streams: Streams,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let (Some(terms), Some(identity)) = (job.terms.secure_aggregation.clone(), &self.identity) else {
            return Err(SessionError::OutOfOrder("a secure round without its terms or an identity"));
        };
        let wait_ms = (self.wait_ms > 0).then_some(self.wait_ms);
        let request = SecAggRequest { client_id: identity.client_id.clone(), message: None, wait_ms };
        notices.push(phase(Phase::SecureAggregation, Some(job.round), "waiting for the cohort"));
        let exchange = Exchange {
            job,
            global,
            terms,
            training: Some(training),
            streams,
            client: None,
            request,
            sent_at_ms: now_ms,
            tries: 1,
            report: None,
        };
        Ok(self.send(Box::new(exchange), now_ms))
    }

    /// Sends the exchange's request.
    fn send(&mut self, mut exchange: Box<Exchange>, now_ms: f64) -> Action {
        exchange.sent_at_ms = now_ms;
        let token = self.identity.as_ref().map(|i| i.token.clone()).unwrap_or_default();
        let (round, request) = (exchange.job.round, exchange.request.clone());
        self.state = State::Exchanging(exchange);
        Action::SecAgg { round, token, request }
    }

    /// Sends `message` (a poll when `None`) as the exchange's next request.
    fn send_message(&mut self, mut exchange: Box<Exchange>, message: Option<ToServer>, now_ms: f64) -> Action {
        exchange.request.message = message;
        exchange.tries = 1;
        self.send(exchange, now_ms)
    }

    /// After a wait: the exchange's request again (a poll, or a message that did not arrive).
    pub(super) fn resend(&mut self, now_ms: f64) -> Result<Action, SessionError> {
        let State::Exchanging(exchange) = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(SessionError::OutOfOrder("not in a secure round"));
        };
        Ok(self.send(exchange, now_ms))
    }

    /// The coordinator's answer to the exchange's request.
    pub(super) fn on_secagg(
        &mut self,
        answer: Result<SecAggAnswer, Failure>,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let State::Exchanging(mut exchange) = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(SessionError::OutOfOrder("not in a secure round"));
        };
        let round = Some(exchange.job.round);
        let answer = match answer {
            Ok(answer) => answer,
            Err(f) if f.status == Some(409) => {
                // The round moved on without this client.
                notices.push(phase(Phase::Waiting, round, "the secure round went on without this client"));
                return Ok(self.check_in(now_ms, notices));
            }
            Err(f) if f.is_transient() && !f.is_overload() && exchange.tries < UPLOAD_TRIES => {
                // The round may still be waiting for this request: send it again.
                notices.push(Notice::Problem(format!("secure aggregation: {}; retrying", f.message)));
                exchange.tries += 1;
                let ms = self.backoff_ms.max(f.retry_after_ms.unwrap_or(0));
                self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MS.1);
                self.state = State::Exchanging(exchange);
                return Ok(Action::Wait { ms });
            }
            Err(f) => {
                if f.status == Some(401) {
                    self.identity = None;
                }
                let wait = if f.is_transient() { None } else { Some(AFTER_REFUSAL_MS) };
                return Ok(self.lose_round(
                    format!("secure aggregation: {}", f.message),
                    wait,
                    f.retry_after_ms,
                    notices,
                ));
            }
        };
        self.backoff_ms = BACKOFF_MS.0;
        // What was sent has arrived: from now on the request is a poll until there is a reply.
        let sent = exchange.request.message.take();
        if let (Some(ToServer::MaskedInput(_)), Some(mut report)) = (&sent, exchange.report.take()) {
            report.upload_ms = now_ms - exchange.sent_at_ms;
            notices.push(Notice::Round(report));
        }
        let rng = &mut exchange.streams.secagg;
        let reply = match answer {
            SecAggAnswer::Wait { retry_after_ms } => {
                // A long poll that ran its full course already waited: ask again at once.
                let wait_ms = exchange.request.wait_ms.unwrap_or(0);
                let held = wait_ms > 0 && now_ms - exchange.sent_at_ms >= wait_ms as f64 * 0.9;
                if held {
                    return Ok(self.send(exchange, now_ms));
                }
                exchange.tries = 1;
                self.state = State::Exchanging(exchange);
                return Ok(Action::Wait { ms: retry_after_ms });
            }
            SecAggAnswer::Done { reason } => {
                notices.push(phase(Phase::Waiting, round, reason.describe()));
                return Ok(self.check_in(now_ms, notices));
            }
            SecAggAnswer::Setup { config, index } => {
                let want = exchange.global.len() + 1;
                if config.round != exchange.job.round || config.dim != want {
                    let why = format!(
                        "the cohort's setup is for round {} with {} values; this round is {} with {want}",
                        config.round, config.dim, exchange.job.round
                    );
                    return Ok(self.lose_round(why, Some(AFTER_REFUSAL_MS), None, notices));
                }
                notices.push(phase(Phase::SecureAggregation, round, format!("member {index} of {}", config.clients)));
                SecAggClient::new(config, index, rng).map(|(client, keys)| {
                    exchange.client = Some(client);
                    ToServer::AdvertiseKeys(keys)
                })
            }
            SecAggAnswer::Message(message) => {
                let Some(client) = exchange.client.as_mut() else {
                    let why = format!("a {:?} message arrived before the cohort's setup", message.stage());
                    return Ok(self.lose_round(why, Some(AFTER_REFUSAL_MS), None, notices));
                };
                match message {
                    ToClient::ShareKeys(keys) => {
                        notices.push(phase(Phase::SecureAggregation, round, "sharing keys with neighbours"));
                        client.share_keys(&keys, rng).map(ToServer::ShareKeys)
                    }
                    ToClient::MaskedInput(shares) => return self.train_secure(exchange, shares, now_ms, notices),
                    ToClient::Unmask(request) => {
                        notices.push(phase(Phase::SecureAggregation, round, "revealing shares for the sum"));
                        client.unmask(&request).map(ToServer::Unmask)
                    }
                }
            }
        };
        match reply {
            Ok(message) => Ok(self.send_message(exchange, Some(message), now_ms)),
            Err(e) => Ok(self.lose_round(format!("secure aggregation: {e}"), Some(AFTER_REFUSAL_MS), None, notices)),
        }
    }

    /// The neighbours' shares are in: train now, then mask.
    fn train_secure(
        &mut self,
        mut exchange: Box<Exchange>,
        shares: IncomingShares,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let (Some(client), Some(training)) = (exchange.client.take(), exchange.training.take()) else {
            let why = "asked to train twice in one secure round".to_string();
            return Ok(self.lose_round(why, Some(AFTER_REFUSAL_MS), None, notices));
        };
        let Exchange { job, global, terms, streams, request, .. } = *exchange;
        let secure = SecureTraining { terms, client, shares, request };
        let round = Training { job, global, streams, started_ms: now_ms, secure: Some(Box::new(secure)) };
        Ok(self.train(round, training, notices))
    }

    /// Clip → noise → `[w·Δ, w]` → masked, and sent.
    pub(super) fn mask(
        &mut self,
        trained: Trained,
        secure: SecureTraining,
        now_ms: f64,
        notices: &mut Vec<Notice>,
    ) -> Result<Action, SessionError> {
        let Trained { job, global, mut streams, mut delta, stats, train_ms } = trained;
        let SecureTraining { terms, mut client, shares, request } = secure;
        let spec = &job.terms.update;
        let (norm, clipped) = match pipeline::prepare_for_sum(&mut delta, spec, &mut streams.noise) {
            Ok(done) => done,
            Err(e) => return Ok(self.lose_round(format!("preparing the update: {e}"), None, None, notices)),
        };
        let w = terms.weight(stats.examples as u64);
        let input: Vec<f32> = delta.as_slice().iter().map(|&x| x * w).chain([w]).collect();
        let masked = match client.mask_input(&shares, &input, &mut streams.secagg) {
            Ok(masked) => ToServer::MaskedInput(masked),
            Err(e) => {
                return Ok(self.lose_round(format!("secure aggregation: {e}"), Some(AFTER_REFUSAL_MS), None, notices));
            }
        };
        let bytes_up = serde_json::to_vec(&masked).map_or(0, |b| b.len());
        let report = RoundReport {
            round: job.round,
            model_version: job.model_version,
            examples: stats.examples,
            local_loss: stats.loss,
            local_accuracy: stats.accuracy,
            bytes_down: job.bytes_down,
            bytes_up,
            update_norm: norm,
            clipped,
            noise_std: spec.noise_std,
            compression: spec.compression.to_string(),
            download_ms: job.download_ms,
            train_ms,
            upload_ms: 0.0,
            round_closed: false,
        };
        notices.push(phase(
            Phase::SecureAggregation,
            Some(job.round),
            format!("sending the masked update ({bytes_up} bytes)"),
        ));
        let exchange = Exchange {
            job,
            global,
            terms,
            training: None,
            streams,
            client: Some(client),
            request,
            sent_at_ms: now_ms,
            tries: 1,
            report: Some(report),
        };
        Ok(self.send_message(Box::new(exchange), Some(masked), now_ms))
    }

    /// This round is lost (a message the client cannot take, a refusal): say why, wait, and
    /// check in again — the coordinator counts the client as dropped.
    fn lose_round(
        &mut self,
        problem: String,
        wait_ms: Option<u64>,
        retry_after_ms: Option<u64>,
        notices: &mut Vec<Notice>,
    ) -> Action {
        match wait_ms {
            Some(ms) => {
                notices.push(Notice::Problem(problem));
                self.wait(ms)
            }
            None => self.back_off(problem, retry_after_ms, notices),
        }
    }
}

#[cfg(test)]
mod tests;
