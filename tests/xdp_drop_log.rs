//! The drop log (`bpf_log`) of the real XDP object under BPF_PROG_TEST_RUN: off, no record;
//! on, one record per drop with the reason and the packet; the per-CPU rate caps records.

use std::sync::{Arc, Mutex};

use lb_common::Stat;
use xlb::apply::{dataplane::drop_log::name_reason, testrun::XdpAction};
use xlb_tests::{
    Balancer,
    packets::{Frame, L4},
    require_root,
};

const CONFIG: &str = r#"
node:
  next_hop_mac: 02:00:00:00:00:fe
vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01", weight: 0 }
"#;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(name_reason(&record.args().to_string()));
    }
    fn flush(&self) {}
}

fn syn(sport: u16) -> Vec<u8> {
    Frame::v4("198.51.100.7", "192.0.2.10", L4::TcpSyn { sport, dport: 80 }).build()
}

#[test]
fn drops_are_logged_with_reason_and_packet_only_while_on_and_at_a_capped_rate() {
    require_root!();
    let mut lb = Balancer::with_config(CONFIG);
    let records = Collect::default();
    let mut logger = lb.program.drop_logger_with(records.clone()).expect("drop logger");

    // Off (the default): the drop is counted, nothing is logged.
    assert_eq!(lb.run(&syn(40000)).action, XdpAction::Drop);
    assert_eq!(lb.stat(Stat::DropNoBackend), 1);
    logger.flush();
    assert!(records.0.lock().unwrap().is_empty(), "off: {:?}", records.0.lock().unwrap());

    // On: the record names the reason and the packet.
    lb.program.set_drop_log(true).expect("on");
    assert_eq!(lb.run(&syn(40001)).action, XdpAction::Drop);
    assert_eq!(lb.stat(Stat::DropNoBackend), 2, "the log program must not count the drop again");
    logger.flush();
    {
        let got = records.0.lock().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0],
            "drop reason=drop_no_backend proto=6 198.51.100.7:40001 > 192.0.2.10:80 ttl=64 suppressed=0"
        );
    }

    // A flood: at most 10 records per CPU per window; the rest are counted as suppressed. (The
    // test runs may land on a new window once: allow one more batch.)
    for sport in 0..100 {
        assert_eq!(lb.run(&syn(41000 + sport)).action, XdpAction::Drop);
    }
    logger.flush();
    let flood = records.0.lock().unwrap().len() - 1;
    assert!((9..=20).contains(&flood), "{flood} records for 100 drops");

    // Off again: nothing more, without a reload.
    lb.program.set_drop_log(false).expect("off");
    let before = records.0.lock().unwrap().len();
    assert_eq!(lb.run(&syn(42000)).action, XdpAction::Drop);
    logger.flush();
    assert_eq!(records.0.lock().unwrap().len(), before);
}
