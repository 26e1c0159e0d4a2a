//! The serving side of remote mode.
//!
//! A function's handler threads read its stream themselves while no caller
//! on this node is connected: each blocks in `XREADGROUP` on its own
//! connection, so a request wakes the thread that handles it, and its answer
//! goes out without waiting, its acknowledgement read with the next request.
//! While local callers are connected the handler threads wait on the local
//! doorbell instead, and the listener thread reads for them, one request at
//! a time. The listener thread also keeps the function's liveness record,
//! keeps the requests being handled ours (heartbeat), claims requests a
//! stopped server left, and sweeps consumers of stopped servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::ConnectionLike;

use super::answered::Answered;
use super::intake::{CLAIM_IDLE, Entry, Intake};
use super::keys::{FORGET_SECONDS, FunctionKeys, GROUP};
use super::link::{LinkPool, RedisLink};
use super::request::{InFlight, RemoteRequest};
use crate::CallError;

/// How often the listener looks for requests a stopped server left.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How often a server refreshes its liveness record and the idle time of
/// the requests it handles (well under `CLAIM_IDLE`).
const BEAT: Duration = Duration::from_millis(CLAIM_IDLE.as_millis() as u64 / 3);
/// How often a server removes consumers of instances gone for `CONSUMER_FORGET`.
const CONSUMER_SWEEP: Duration = Duration::from_secs(60);
/// A consumer with nothing pending and idle this long belonged to an
/// instance that stopped (a live one reads every second).
const CONSUMER_FORGET: Duration = Duration::from_secs(600);
/// The longest a read blocks, so that stopping and mode changes are seen.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// A server's heartbeat: its liveness record (scored with the Redis clock,
/// so nodes' clocks do not matter), the expiry of the function's keys, and
/// the idle time of the requests it handles (ARGV[4..]), which
/// `XCLAIM … JUSTID` resets without counting a delivery.
const BEAT_SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if #ARGV > 3 then
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[1], 0, unpack(ARGV, 4))
end
return now
";

/// Removes consumers with nothing pending, idle longer than ARGV[3] ms,
/// other than ourselves; atomic, so a consumer cannot take an entry
/// between the check and its removal.
const SWEEP_SCRIPT: &str = r"
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
";

/// Whether callers on this node are connected (then the listener thread
/// reads remote requests, and handler threads wait on the local doorbell).
pub type LocalCallers = Arc<dyn Fn() -> bool + Send + Sync>;

/// Takes one function's remote requests.
pub struct RemoteListener {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    intake: Intake,
    /// A request the listener thread read or claimed, for the next handler.
    slot: Mutex<Option<RemoteRequest>>,
    /// The group exists and Redis answers: handler threads may read.
    ready: AtomicBool,
    stop: AtomicBool,
    local_callers: LocalCallers,
    notify: Arc<dyn Fn() + Send + Sync>,
    /// Client ids of handler threads blocked in a read, and a link to
    /// unblock them (`CLIENT UNBLOCK`) when a request waits elsewhere.
    blocked: Mutex<Vec<i64>>,
    control: Mutex<RedisLink>,
}

impl RemoteListener {
    /// Starts taking requests for `function`; `notify` wakes the handler
    /// threads waiting on the local doorbell. Redis being down only delays
    /// this: the listener keeps retrying.
    pub fn start(
        redis_url: &str,
        namespace: &str,
        function: &str,
        consumer: &str,
        notify: Arc<dyn Fn() + Send + Sync>,
        local_callers: LocalCallers,
    ) -> Result<Self, CallError> {
        let keys = FunctionKeys::new(namespace, function);
        let intake = Intake {
            function: function.to_owned(),
            stream: keys.requests(),
            dead_stream: keys.dead_letters(),
            keys,
            consumer: consumer.to_owned(),
            pool: LinkPool::new(redis_url)?,
            in_flight: Arc::new(InFlight::default()),
            answered: Arc::new(Answered::default()),
        };
        let shared = Arc::new(Shared {
            intake,
            slot: Mutex::new(None),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            local_callers,
            notify,
            blocked: Mutex::new(Vec::new()),
            control: Mutex::new(RedisLink::new(redis_url)?),
        });
        let listener = Listener {
            link: RedisLink::new(redis_url)?,
            servers: shared.intake.keys.servers(),
            shared: shared.clone(),
            beat_script: redis::Script::new(BEAT_SCRIPT),
            last_beat: None,
            last_sweep: None,
            last_recovery: None,
        };
        let thread = crate::threads::spawn("cwasi-remote-listen", move || listener.run()).map_err(CallError::Io)?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// The request the listener thread took, if any.
    pub fn take(&self) -> Option<RemoteRequest> {
        self.shared.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether handler threads read requests themselves ([`RemoteListener::read`])
    /// rather than wait on the local doorbell.
    pub fn handlers_read(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && !(self.shared.local_callers)()
    }

    /// Blocks this (handler) thread in Redis for the next request, at most
    /// a second, or until [`RemoteListener::interrupt_readers`].
    pub fn read(&self) -> Option<RemoteRequest> {
        let shared = &self.shared;
        let mut link = shared.intake.pool.take().ok()?;
        // Without the right to ask (an ACL without `client|id`), a read
        // cannot be interrupted and only ends with its block time.
        let client_id = link.client_id().ok().flatten();
        if let Some(id) = client_id {
            shared.lock_blocked().push(id);
        }
        let read = shared.intake.read_new(&mut link, READ_BLOCK);
        if let Some(id) = client_id {
            shared.lock_blocked().retain(|&b| b != id);
        }
        match read {
            Ok(Some(entry)) => shared.intake.admit(link, entry),
            Ok(None) => None,
            Err(e) => {
                // The listener thread sets things up again, then rings.
                if shared.ready.swap(false, Ordering::AcqRel) {
                    tracing::warn!(function = %shared.intake.function, "remote requests paused: {e}");
                }
                None
            }
        }
    }

    /// Ends the reads of handler threads blocked in Redis (a local caller
    /// connected, a claimed request waits in the slot, the server drains).
    pub fn interrupt_readers(&self) {
        self.shared.interrupt_readers();
    }
}

impl Drop for RemoteListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // The thread wakes within a second (its blocking read times out).
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock_blocked(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn interrupt_readers(&self) {
        let blocked = self.lock_blocked().clone();
        if blocked.is_empty() {
            return;
        }
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        for id in blocked {
            if let Err(e) =
                control.run("CLIENT UNBLOCK", |c| redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query::<i64>(c))
            {
                tracing::debug!(function = %self.intake.function, "cannot interrupt a blocked read: {e}");
                return;
            }
        }
    }

    /// Puts `request` in the slot for the next handler and wakes one.
    fn offer(&self, request: RemoteRequest) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
        (self.notify)();
        self.interrupt_readers();
    }
}

/// The listener thread.
struct Listener {
    link: RedisLink,
    servers: String,
    shared: Arc<Shared>,
    beat_script: redis::Script,
    last_beat: Option<Instant>,
    last_sweep: Option<Instant>,
    last_recovery: Option<Instant>,
}

impl Listener {
    fn run(mut self) {
        let mut warned = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.turn() {
                Ok(()) => warned = false,
                Err(e) => {
                    self.shared.ready.store(false, Ordering::Release);
                    if !warned {
                        tracing::warn!(function = %self.shared.intake.function, redis = %self.link.url(), "remote requests paused: {e}");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Sets up (after a start or Redis trouble), keeps the records, claims
    /// what stopped servers left, and reads for the handlers while local
    /// callers are connected; else sleeps until the next chore.
    fn turn(&mut self) -> Result<(), CallError> {
        let shared = self.shared.clone();
        if !shared.ready.load(Ordering::Acquire) {
            let stream = &shared.intake.stream;
            self.link.run("XGROUP CREATE", |c| create_group(c, stream))?;
            // Callers find the function alive before they find it ready.
            self.beat()?;
            tracing::info!(function = %shared.intake.function, redis = %self.link.url(), "remote serving ready");
            shared.ready.store(true, Ordering::Release);
            (shared.notify)();
        }
        self.housekeeping();
        if self.last_recovery.is_none_or(|at| at.elapsed() >= RECOVERY_INTERVAL) {
            self.last_recovery = Some(Instant::now());
            if let Some(entry) = shared.intake.claim_stale(&mut self.link)? {
                self.hand_over(entry);
                return Ok(());
            }
        }
        if (shared.local_callers)() {
            if let Some(entry) = shared.intake.read_new(&mut self.link, READ_BLOCK)? {
                self.hand_over(entry);
            }
        } else {
            // The handler threads read; wake for the next chore.
            let next = [self.last_beat.map(|at| at + BEAT), self.last_recovery.map(|at| at + RECOVERY_INTERVAL)]
                .into_iter()
                .flatten()
                .min()
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()));
            std::thread::sleep(next.min(Duration::from_millis(200)));
        }
        Ok(())
    }

    /// Gives `entry` to a handler and waits until it is finished (one at a
    /// time: others stay in the stream for other servers), keeping the
    /// records meanwhile.
    fn hand_over(&mut self, entry: Entry) {
        let shared = self.shared.clone();
        let Ok(link) = shared.intake.pool.take() else { return };
        let Some(request) = shared.intake.admit(link, entry) else { return };
        let stream_entry = request.stream_entry.clone();
        shared.offer(request);
        while !shared.stop.load(Ordering::Acquire) {
            if shared.intake.in_flight.wait_finished(&stream_entry, Duration::from_millis(200)) {
                break;
            }
            self.housekeeping();
        }
    }

    /// Refreshes the liveness record and the requests being handled, and
    /// once a minute removes consumers of instances that stopped. Failures
    /// only wait for the next turn.
    fn housekeeping(&mut self) {
        if self.last_beat.is_none_or(|at| at.elapsed() >= BEAT)
            && let Err(e) = self.beat()
        {
            tracing::warn!(function = %self.shared.intake.function, "heartbeat failed: {e}");
        }
        if self.last_sweep.is_none_or(|at| at.elapsed() >= CONSUMER_SWEEP) {
            self.last_sweep = Some(Instant::now());
            static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWEEP_SCRIPT));
            let intake = &self.shared.intake;
            let idle_ms = CONSUMER_FORGET.as_millis() as u64;
            match self.link.run("removing stopped consumers", |c| {
                SCRIPT.key(&intake.stream).arg(GROUP).arg(&intake.consumer).arg(idle_ms).invoke::<i64>(c)
            }) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(function = %intake.function, removed, "removed consumers of stopped servers")
                }
                Err(e) => tracing::debug!(function = %intake.function, "consumer sweep: {e}"),
            }
        }
    }

    /// One heartbeat, which also resets the idle time of every request
    /// being handled here, so no other server claims it.
    fn beat(&mut self) -> Result<(), CallError> {
        self.last_beat = Some(Instant::now());
        let intake = &self.shared.intake;
        let handling = intake.in_flight.all();
        let (script, servers) = (&self.beat_script, &self.servers);
        self.link.run("heartbeat", |c| {
            let mut invocation = script.prepare_invoke();
            invocation.key(servers).key(&intake.stream).key(&intake.dead_stream);
            invocation.arg(&intake.consumer).arg(FORGET_SECONDS).arg(GROUP);
            for entry in &handling {
                invocation.arg(entry);
            }
            if !handling.is_empty() {
                invocation.arg("JUSTID");
            }
            invocation.invoke::<i64>(c)
        })?;
        Ok(())
    }
}

fn create_group(c: &mut dyn ConnectionLike, stream: &str) -> redis::RedisResult<()> {
    // From the start of the stream: requests queued before any server ran count.
    match redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query::<()>(c) {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}
