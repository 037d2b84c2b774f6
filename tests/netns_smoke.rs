//! End to end through a veth pair: `xlb run` attached in one namespace, real TCP and UDP sent
//! from the other, counters read back through the agent's admin socket.
