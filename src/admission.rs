//! An admitted request's lease in the consumer's counter, on the edge: reserved by `admit`, renewed
//! while the request lives (so a long stream keeps its slot), and settled exactly once: by `settle`,
//! or, if the request is dropped first (the client went away), by the fallback its `Drop` sends. The
//! settle call itself runs in the runtime's `wait_until`, so it survives the client; `settle` waits
//! for it, so an answer seen in full always has its usage stored. A settlement made after its answer
//! (`settle_later`) waits in the isolate (`limits::settling`): the consumer's next counter call
//! carries it (settled first, so it frees what it held), and its own flush sends it `SETTLE_WAIT_MS`
//! later if it is still unconfirmed.
//!
//! `Watch` is how a waiting request notices its client: the incoming request's abort signal (the
//! `enable_request_signal` compatibility flag) fires where the runtime detects a hang-up (the
//! Cloudflare edge does; local workerd notices only when a write fails, which is why a quiet stream
//! sends heartbeats), and its timers say when to renew the lease and when a stream has been idle.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use futures_channel::oneshot;
use futures_util::future::poll_fn;
use futures_util::FutureExt;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use worker::{Context, Delay, Env, Request};

use crate::error::Error;
use crate::http::now_ms;
use crate::limits::counter::{Ask, Outcome, Refusal, Window};
use crate::limits::headers::rate_limit_headers;
use crate::limits::ops::{CounterReply, CounterRequest};
use crate::limits::plan::{Limits, Plan};
use crate::limits::settling::Settling;
use crate::limits::standing::Presented;
use crate::store::counter_do as counter;
use crate::timing::{Binding, Timing};
use crate::usage::{Ended, UsageRecord};

type SettleMsg = (Outcome, Option<oneshot::Sender<()>>);

/// How long a settlement made after its answer waits for the consumer's next admission to carry it.
/// The lease's reservation (the worst case) stays held meanwhile: a short delay, never an overrun.
const SETTLE_WAIT_MS: u64 = 20;

thread_local! {
    /// Settlements waiting in this isolate for their counters.
    static SETTLING: RefCell<Settling> = RefCell::new(Settling::default());
}

fn settling<R>(f: impl FnOnce(&mut Settling) -> R) -> R {
    SETTLING.with(|s| f(&mut s.borrow_mut()))
}

/// `op`, preceded by the waiting settlements `ahead` when there are any (one call, one turn).
fn carrying(mut ahead: Vec<CounterRequest>, op: CounterRequest) -> CounterRequest {
    if ahead.is_empty() {
        return op;
    }
    ahead.push(op);
    CounterRequest::Batch { ops: ahead }
}

/// One call to the counter with the settlements waiting for it going first; whether a flush must
/// follow (the call failed, and what it carried waits again).
async fn send_carrying(
    env: &Env,
    api_id: &str,
    consumer_id: &str,
    op: CounterRequest,
) -> (Result<CounterReply, Error>, bool) {
    let counter = (api_id, consumer_id);
    let carried = settling(|s| s.carry(counter));
    let op = carrying(carried.ops, op);
    let reply = counter::call(env, api_id, consumer_id, &op).await;
    if reply.is_ok() {
        settling(|s| s.landed(counter, &carried.leases));
        return (reply, false);
    }
    settling(|s| s.carry_failed(counter, &carried.leases));
    (reply, !carried.leases.is_empty())
}

/// Sends, `SETTLE_WAIT_MS` from now, the settlements still waiting for a counter (nothing when an
/// admission carried them meanwhile). When the counter cannot be reached their leases expire and
/// are booked at their reservations, with `abandoned` records.
async fn flush_later(env: &Env, api_id: &str, consumer_id: &str) {
    Delay::from(std::time::Duration::from_millis(SETTLE_WAIT_MS)).await;
    let counter = (api_id, consumer_id);
    let mut carried = settling(|s| s.flush(counter));
    let op = match carried.ops.len() {
        0 => return,
        1 => carried.ops.remove(0),
        _ => CounterRequest::Batch {
            ops: std::mem::take(&mut carried.ops),
        },
    };
    match counter::call(env, api_id, consumer_id, &op).await {
        Ok(_) => settling(|s| s.landed(counter, &carried.leases)),
        Err(e) => {
            worker::console_error!("settlements not sent: {}", e.detail);
            settling(|s| s.flush_failed(counter, &carried.leases));
        }
    }
}

/// Where a request stands, for the outcome filed if it is dropped before it settles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// The prompt may have reached the upstream: from here on it is booked.
    pub sent_upstream: bool,
    /// Completion tokens delivered so far (their upper bound).
    pub delivered: u64,
    pub ttft_ms: Option<u64>,
}

/// A live lease. Dropping it unsettled files a `client_gone` outcome built from `progress`.
pub struct Lease {
    env: Env,
    api_id: String,
    consumer_id: String,
    pub id: String,
    pub limits: Limits,
    pub plan: String,
    /// The key, credential and session the request came with: a renewal or an extension is refused
    /// once any of them (or the consumer) may no longer call.
    who: Presented,
    /// The model asked for (a refusal names it).
    model: String,
    /// The completion cap per choice the counter granted (`None`: nothing limits it).
    pub cap: Option<u64>,
    pub windows: Vec<Window>,
    pub started: i64,
    pub prompt_bound: u64,
    /// Choices asked for.
    pub n: u64,
    /// Renewals come three times per lease lifetime.
    renew_every_ms: i64,
    pub progress: Progress,
    /// The upstream's own request id, once its answer said one.
    pub upstream_request_id: Option<String>,
    /// What the upstream said when it failed, for the usage record.
    pub upstream_error: Option<String>,
    /// Who answered (a fallback) and every try upstream, for the usage record and the price.
    pub answered: Option<crate::limits::counter::Answered>,
    pub attempts: Vec<crate::usage::Attempt>,
    settle: Option<oneshot::Sender<SettleMsg>>,
}

/// Who is asking and for what: the counter's key, the credential it came with, the API's plans
/// (the counter knows which applies), the model and the request's worst case.
pub struct Claim<'a> {
    pub api_id: &'a str,
    pub consumer_id: &'a str,
    pub who: Presented,
    pub plans: &'a [Plan],
    pub model: &'a str,
    pub priced: bool,
    pub ask: Ask,
    pub record: UsageRecord,
}

/// One call to the counter of (`api_id`, `consumer_id`) with the settlements this isolate holds for
/// it going first, so what it answers (an admission, a status) counts them.
pub async fn call_carrying(
    env: &Env,
    ctx: &Context,
    api_id: &str,
    consumer_id: &str,
    op: CounterRequest,
) -> Result<CounterReply, Error> {
    let (reply, flush) = send_carrying(env, api_id, consumer_id, op).await;
    if flush {
        let (env, api_id, consumer_id) = (env.clone(), api_id.to_string(), consumer_id.to_string());
        ctx.wait_until(async move { flush_later(&env, &api_id, &consumer_id).await });
    }
    reply
}

/// Phase 4's one counter call: the consumer's standing and plan are checked and the worst case is
/// held, or the request is refused with the problem the counter names.
pub async fn admit(
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    claim: Claim<'_>,
) -> Result<Lease, Error> {
    let now = claim.record.created_at;
    let lease_id = claim.record.id.clone();
    let (prompt_bound, n, ttl) = (claim.ask.prompt, claim.ask.n, claim.ask.lease_ttl_ms);
    // A proof is used once, at admission; later checks need only who it is.
    let who = Presented {
        dpop_jti: None,
        ..claim.who.clone()
    };
    let op = CounterRequest::Admit {
        now,
        lease_id: lease_id.clone(),
        who: claim.who,
        plans: claim.plans.to_vec(),
        model: claim.model.to_string(),
        priced: claim.priced,
        ask: claim.ask,
        record: Box::new(claim.record),
    };
    let started = now_ms();
    let reply = call_carrying(env, ctx, claim.api_id, claim.consumer_id, op).await;
    timing.call(Binding::Do, (now_ms() - started) as f64);
    let (cap, plan, windows) = match reply? {
        CounterReply::Admitted { cap, plan, windows } => (cap, plan, windows),
        CounterReply::Denied { denial, windows } => {
            return Err(denial
                .to_error(claim.model)
                .with_headers(rate_limit_headers(&windows, now)));
        }
        _ => {
            return Err(Error::internal(
                "The counter answered an admission with something else.",
            ))
        }
    };
    let (tx, rx) = oneshot::channel::<SettleMsg>();
    let (task_env, api_id, consumer_id, id) = (
        env.clone(),
        claim.api_id.to_string(),
        claim.consumer_id.to_string(),
        lease_id.clone(),
    );
    ctx.wait_until(async move {
        // The sender is consumed by `settle` or by `Drop`, so a message always comes.
        let Ok((outcome, done)) = rx.await else {
            return;
        };
        let Some(done) = done else {
            // After the answer: the consumer's next admission may carry it.
            let counter = (api_id.as_str(), consumer_id.as_str());
            settling(|s| s.wait(counter, now_ms(), id, outcome));
            flush_later(&task_env, &api_id, &consumer_id).await;
            return;
        };
        let op = CounterRequest::Settle {
            now: now_ms(),
            lease_id: id.clone(),
            outcome,
        };
        let (reply, flush) = send_carrying(&task_env, &api_id, &consumer_id, op).await;
        if let Err(e) = reply {
            // The lease then expires and is booked at its reservation, with an `abandoned` record.
            worker::console_error!("settle failed for {id}: {}", e.detail);
        }
        let _ = done.send(());
        if flush {
            flush_later(&task_env, &api_id, &consumer_id).await;
        }
    });
    Ok(Lease {
        env: env.clone(),
        api_id: claim.api_id.to_string(),
        consumer_id: claim.consumer_id.to_string(),
        id: lease_id,
        limits: plan.limits,
        plan: plan.name,
        who,
        model: claim.model.to_string(),
        cap,
        windows,
        started: now,
        prompt_bound,
        n,
        renew_every_ms: ttl / 3,
        progress: Progress::default(),
        upstream_request_id: None,
        upstream_error: None,
        answered: None,
        attempts: Vec::new(),
        settle: Some(tx),
    })
}

impl Lease {
    async fn op(&self, op: CounterRequest) -> Result<CounterReply, Error> {
        counter::call(&self.env, &self.api_id, &self.consumer_id, &op).await
    }

    /// Settles once without waiting: the counter books it after the answer is sent, carried by the
    /// consumer's next admission or on its own `SETTLE_WAIT_MS` later (the reservation already covers
    /// the worst case, and an unsettled lease expires into an estimated record).
    pub fn settle_later(mut self, outcome: Outcome) {
        let outcome = self.with_answer(outcome);
        if let Some(tx) = self.settle.take() {
            let _ = tx.send((outcome, None));
        }
    }

    /// Settles once, and waits until the counter has booked it and filed the record.
    pub async fn settle(mut self, outcome: Outcome) {
        let outcome = self.with_answer(outcome);
        let (done, settled) = oneshot::channel();
        if let Some(tx) = self.settle.take() {
            if tx.send((outcome, Some(done))).is_ok() {
                let _ = settled.await;
            }
        }
    }

    /// An outcome with who answered and the tries upstream, however it was made.
    fn with_answer(&mut self, mut outcome: Outcome) -> Outcome {
        outcome.answered = self.answered.take();
        outcome.attempts = std::mem::take(&mut self.attempts);
        outcome
    }

    /// The outcome when the request ends with `ended` and no usage report: the prompt is booked at
    /// its bound once it was sent, the completion at what was delivered.
    pub fn estimated(&self, status: u16, ended: Ended) -> Outcome {
        Outcome {
            status,
            ended,
            prompt_tokens: if self.progress.sent_upstream {
                self.prompt_bound
            } else {
                0
            },
            completion_tokens: self.progress.delivered,
            estimated: self.progress.sent_upstream,
            latency_ms: self.elapsed(),
            ttft_ms: self.progress.ttft_ms,
            upstream_request_id: self.upstream_request_id.clone(),
            upstream_error: self.upstream_error.clone(),
            ..Outcome::default()
        }
    }

    /// The completion tokens the counter holds for this request: the cap for each of its choices
    /// (`None`: nothing limits it).
    pub fn completion_cap(&self) -> Option<u64> {
        self.cap.map(|cap| cap.saturating_mul(self.n.max(1)))
    }

    pub fn elapsed(&self) -> u64 {
        (now_ms() - self.started).max(0) as u64
    }

    /// Keeps the lease from expiring under a long request: `Err` with the refusal when the consumer
    /// was disabled, or its key or session revoked, since it was admitted (the request ends). A
    /// counter that cannot be reached is logged; the lease then expires on its own.
    pub async fn renew(&self) -> Result<(), Error> {
        let op = CounterRequest::Renew {
            now: now_ms(),
            lease_id: self.id.clone(),
            who: self.who.clone(),
        };
        match self.op(op).await {
            Ok(CounterReply::Denied { denial, .. }) => Err(denial.to_error(&self.model)),
            Ok(_) => Ok(()),
            Err(e) => {
                worker::console_error!("lease {} not renewed: {}", self.id, e.detail);
                Ok(())
            }
        }
    }

    /// Asks for `want` more completion tokens: `Ok(granted)`, or the refusal that ends the stream.
    pub async fn extend(&self, want: u64) -> Result<u64, Error> {
        let now = now_ms();
        let op = CounterRequest::Extend {
            now,
            limits: self.limits.clone(),
            lease_id: self.id.clone(),
            want,
            who: self.who.clone(),
        };
        match self.op(op).await? {
            CounterReply::Denied { denial, .. } => Err(denial.to_error(&self.model)),
            CounterReply::Extended { granted, .. } if granted > 0 => Ok(granted),
            CounterReply::Extended { windows, .. } => {
                Err(Refusal::exhausted(&windows, now).to_error(&self.plan))
            }
            _ => Err(Error::internal(
                "The counter answered an extension with something else.",
            )),
        }
    }

    /// Awaits `fut` while the client is there, renewing the lease on schedule: `Gone` when the
    /// client went away first, `Denied` when a renewal found the request may no longer run.
    pub async fn while_client_waits<F: Future>(
        &self,
        watch: &mut Watch,
        fut: F,
    ) -> Woke<F::Output> {
        let fut = std::pin::pin!(fut);
        self.wait(watch, fut, None).await
    }

    /// Like `while_client_waits`, and also wakes with `Woke::Idle` when `idle_ms` pass first (the
    /// idle timer runs across calls, so a busy stream arms one timer per `idle_ms`, not per read).
    pub async fn wait<F: Future>(
        &self,
        watch: &mut Watch,
        mut fut: Pin<&mut F>,
        idle_ms: Option<i64>,
    ) -> Woke<F::Output> {
        loop {
            match watch.race(fut.as_mut(), self.renew_every_ms, idle_ms).await {
                Woke::Renew => {
                    if let Err(e) = self.renew().await {
                        return Woke::Denied(e);
                    }
                }
                other => return other,
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.settle.take() {
            let _ = tx.send((self.estimated(499, Ended::ClientGone), None));
        }
    }
}

/// What woke a waiting request.
pub enum Woke<T> {
    Done(T),
    /// The client hung up.
    Gone,
    /// Time to renew the lease.
    Renew,
    /// The idle time passed with nothing done.
    Idle,
    /// A renewal found that the consumer was disabled, or its key or session revoked.
    Denied(Error),
}

impl<T> Woke<T> {
    /// The same wake, with what was done mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Woke<U> {
        match self {
            Woke::Done(v) => Woke::Done(f(v)),
            Woke::Gone => Woke::Gone,
            Woke::Renew => Woke::Renew,
            Woke::Idle => Woke::Idle,
            Woke::Denied(e) => Woke::Denied(e),
        }
    }
}

/// The client's presence and the lease's renewal schedule, for one request.
pub struct Watch {
    gone: oneshot::Receiver<()>,
    signal: worker::web_sys::AbortSignal,
    _on_abort: Closure<dyn FnMut()>,
    /// Set on the first wait, so a quick request arms no timer.
    renew_at: Option<Timer>,
    idle_at: Option<Timer>,
}

impl Watch {
    pub fn new(req: &Request) -> Watch {
        let (tx, gone) = oneshot::channel::<()>();
        let mut tx = Some(tx);
        let signal = req.inner().signal();
        let on_abort = Closure::<dyn FnMut()>::new(move || {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        });
        signal.set_onabort(Some(on_abort.as_ref().unchecked_ref()));
        Watch {
            gone,
            signal,
            _on_abort: on_abort,
            renew_at: None,
            idle_at: None,
        }
    }

    /// Polls `fut` against the client's hang-up, the renewal timer (every `renew_ms`) and, when
    /// asked, the idle timer.
    async fn race<F: Future>(
        &mut self,
        mut fut: Pin<&mut F>,
        renew_ms: i64,
        idle_ms: Option<i64>,
    ) -> Woke<F::Output> {
        let timer = self.renew_at.get_or_insert_with(|| Timer::after(renew_ms));
        if let (None, Some(ms)) = (&self.idle_at, idle_ms) {
            self.idle_at = Some(Timer::after(ms));
        }
        let idle = self.idle_at.as_ref();
        let aborted = self.signal.aborted();
        let gone = &mut self.gone;
        let woke = poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Woke::Done(v));
            }
            if aborted || gone.poll_unpin(cx).is_ready() {
                return Poll::Ready(Woke::Gone);
            }
            if timer.poll_fired(cx) {
                return Poll::Ready(Woke::Renew);
            }
            if idle.is_some_and(|t| t.poll_fired(cx)) {
                return Poll::Ready(Woke::Idle);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Renew => self.renew_at = None,
            Woke::Idle => self.idle_at = None,
            _ => {}
        }
        woke
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.signal.set_onabort(None);
    }
}

/// A one-shot timer that wakes whichever task polled it last (a stream is polled from a new task
/// on every read, so the waker of the first poll may be long gone).
struct Timer {
    fired: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
    timeout_id: Option<i32>,
    _callback: Closure<dyn FnMut()>,
}

impl Timer {
    fn after(ms: i64) -> Timer {
        let fired = Rc::new(Cell::new(false));
        let waker: Rc<RefCell<Option<Waker>>> = Rc::new(RefCell::new(None));
        let (f, w) = (fired.clone(), waker.clone());
        let callback = Closure::<dyn FnMut()>::new(move || {
            f.set(true);
            if let Some(w) = w.borrow_mut().take() {
                w.wake();
            }
        });
        let global: worker::web_sys::WorkerGlobalScope = worker::js_sys::global().unchecked_into();
        let timeout_id = global
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                callback.as_ref().unchecked_ref(),
                i32::try_from(ms).unwrap_or(i32::MAX),
            )
            .ok();
        Timer {
            fired,
            waker,
            timeout_id,
            _callback: callback,
        }
    }

    fn poll_fired(&self, cx: &mut TaskContext<'_>) -> bool {
        if self.fired.get() {
            return true;
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        false
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(id) = self.timeout_id.take() {
            let global: worker::web_sys::WorkerGlobalScope =
                worker::js_sys::global().unchecked_into();
            global.clear_timeout_with_handle(id);
        }
    }
}
