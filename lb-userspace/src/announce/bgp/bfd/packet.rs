//! The BFD control packet (RFC 5880 §4.1): session states, diagnostics, encoding and the
//! checks on decoding.

use super::*;

/// bfd.SessionState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// As `xlb status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "admin_down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1) the speaker sets.
pub const DIAG_NONE: u8 = 0;
pub const DIAG_DETECTION_TIME_EXPIRED: u8 = 1;
pub const DIAG_NEIGHBOR_DOWN: u8 = 3;
pub const DIAG_ADMIN_DOWN: u8 = 7;

/// A BFD control packet without authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub fin: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet is dropped (RFC 5880 §6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Short,
    Version(u8),
    Length(u8),
    ZeroMultiplier,
    Multipoint,
    ZeroDiscriminator,
    /// Your Discriminator is zero but the sender says Init or Up.
    NoYourDiscriminator,
    /// Authentication is not configured here.
    Authenticated,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Short => write!(f, "shorter than {PACKET_LEN} bytes"),
            Invalid::Version(v) => write!(f, "version {v}, not 1"),
            Invalid::Length(l) => write!(f, "length field {l} does not match"),
            Invalid::ZeroMultiplier => write!(f, "detect multiplier 0"),
            Invalid::Multipoint => write!(f, "multipoint bit set"),
            Invalid::ZeroDiscriminator => write!(f, "My Discriminator 0"),
            Invalid::NoYourDiscriminator => write!(f, "Your Discriminator 0 outside Down/AdminDown"),
            Invalid::Authenticated => write!(f, "authentication present but not configured"),
        }
    }
}

impl Packet {
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = ((self.state as u8) << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.fin) << 4)
            | (u8::from(self.demand) << 1);
        b[2] = self.detect_mult;
        b[3] = PACKET_LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Packet, Invalid> {
        if b.len() < PACKET_LEN {
            return Err(Invalid::Short);
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(Invalid::Version(version));
        }
        let auth = b[1] & 0x04 != 0;
        let len = b[3];
        if usize::from(len) > b.len() || len < if auth { 26 } else { PACKET_LEN as u8 } {
            return Err(Invalid::Length(len));
        }
        if auth {
            return Err(Invalid::Authenticated);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: State::from_bits(b[1] >> 6),
            poll: b[1] & 0x20 != 0,
            fin: b[1] & 0x10 != 0,
            demand: b[1] & 0x02 != 0,
            detect_mult: b[2],
            my_disc: word(4),
            your_disc: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        };
        if p.detect_mult == 0 {
            return Err(Invalid::ZeroMultiplier);
        }
        if b[1] & 0x01 != 0 {
            return Err(Invalid::Multipoint);
        }
        if p.my_disc == 0 {
            return Err(Invalid::ZeroDiscriminator);
        }
        if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(Invalid::NoYourDiscriminator);
        }
        Ok(p)
    }
}

pub(super) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
