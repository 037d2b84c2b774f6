//! One BFD session's state machine (RFC 5880 §6.8): packets in, packets and state changes out,
//! time passed in.

use super::packet::micros;
use super::*;

/// What a session reports: its state and the diagnostic of the last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub diag: u8,
    /// The peer said AdminDown: it turned BFD off, which is no failure (RFC 5882 §3.2).
    pub peer_admin_down: bool,
}

/// One BFD session's state variables (RFC 5880 §6.8.1) and timers.
#[derive(Debug, Clone)]
pub struct Session {
    config: BfdConfig,
    pub state: State,
    pub diag: u8,
    local_disc: u32,
    remote_disc: u32,
    remote_state: State,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    /// A Poll Sequence is running (our timers changed; RFC 5880 §6.5).
    polling: bool,
    /// The interval we advertise now: 1 s until Up, then `config.min_tx`.
    desired_tx: Duration,
    next_tx: Instant,
    detect_at: Option<Instant>,
}

impl Session {
    pub fn new(config: BfdConfig, local_disc: u32, now: Instant) -> Session {
        Session {
            config,
            state: State::Down,
            diag: DIAG_NONE,
            local_disc,
            remote_disc: 0,
            remote_state: State::Down,
            // RFC 5880 §6.8.1: initially 1 µs.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            polling: false,
            desired_tx: config.min_tx.max(SLOW_TX),
            next_tx: now,
            detect_at: None,
        }
    }

    pub fn status(&self) -> Status {
        Status { state: self.state, diag: self.diag, peer_admin_down: self.remote_state == State::AdminDown }
    }

    /// A control packet as the session would send it now.
    pub fn packet(&self, fin: bool) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !fin,
            fin,
            demand: false,
            detect_mult: self.config.multiplier,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_tx),
            required_min_rx: micros(self.config.min_rx),
            required_min_echo_rx: 0,
        }
    }

    /// Detection time: the remote multiplier times the slower of what we accept and what it
    /// sends (RFC 5880 §6.8.4).
    pub fn detection_time(&self) -> Duration {
        self.config.min_rx.max(self.remote_desired_tx) * u32::from(self.remote_mult.max(1))
    }

    fn tx_interval(&self) -> Duration {
        self.desired_tx.max(self.remote_min_rx)
    }

    fn set_state(&mut self, state: State, diag: u8, now: Instant) {
        if state == self.state {
            return;
        }
        self.state = state;
        self.diag = diag;
        let desired = if state == State::Up { self.config.min_tx } else { self.config.min_tx.max(SLOW_TX) };
        if desired != self.desired_tx {
            self.desired_tx = desired;
            self.polling = true;
        }
        // Tell the peer at once.
        self.next_tx = now;
    }

    /// Handles a received packet; returns a packet to send at once (the Final answer to a
    /// Poll), if any.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Option<Packet> {
        if p.your_disc != 0 && p.your_disc != self.local_disc {
            return None;
        }
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
        self.remote_desired_tx = Duration::from_micros(u64::from(p.desired_min_tx));
        self.remote_mult = p.detect_mult;
        if p.fin && self.polling {
            self.polling = false;
        }
        if self.state == State::AdminDown {
            return None;
        }
        self.detect_at = Some(now + self.detection_time());
        match (self.state, p.state) {
            (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) => self.set_state(State::Down, DIAG_NEIGHBOR_DOWN, now),
            (State::Down, State::Down) => self.set_state(State::Init, DIAG_NONE, now),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, DIAG_NONE, now)
            }
            (State::Up, State::Down) => self.set_state(State::Down, DIAG_NEIGHBOR_DOWN, now),
            _ => {}
        }
        p.poll.then(|| self.packet(true))
    }

    /// Runs the timers up to `now`: the detection timer, then periodic transmission. Returns the
    /// packet to send, if one is due; `rand` (0..1) jitters the next interval.
    pub fn tick(&mut self, now: Instant, rand: f64) -> Option<Packet> {
        if self.detect_at.is_some_and(|at| now >= at) {
            self.detect_at = None;
            self.remote_disc = 0;
            self.remote_state = State::Down;
            if matches!(self.state, State::Init | State::Up) {
                self.set_state(State::Down, DIAG_DETECTION_TIME_EXPIRED, now);
            }
        }
        if now < self.next_tx {
            return None;
        }
        // RFC 5880 §6.8.7: 75–100 % of the interval (75–90 % with a multiplier of 1).
        let top = if self.config.multiplier == 1 { 0.9 } else { 1.0 };
        let factor = 0.75 + (top - 0.75) * rand.clamp(0.0, 1.0);
        self.next_tx = now + self.tx_interval().mul_f64(factor);
        // A peer asking for no packets (Required Min RX 0) gets none.
        (!self.remote_min_rx.is_zero()).then(|| self.packet(false))
    }

    /// The next instant `tick` has work.
    pub fn next_deadline(&self) -> Instant {
        match self.detect_at {
            Some(at) => at.min(self.next_tx),
            None => self.next_tx,
        }
    }

    /// Administratively down: the peer is told not to count this as a failure.
    pub fn admin_down(&mut self, now: Instant) {
        self.set_state(State::AdminDown, DIAG_ADMIN_DOWN, now);
        self.detect_at = None;
    }
}
