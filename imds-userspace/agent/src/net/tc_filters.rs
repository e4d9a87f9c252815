//! The legacy tc filters (clsact, kernels before 6.6) on the pod's links,
//! as the kernel lists them. Without TCX nothing can be pinned, so what is
//! attached is read back from the kernel: a restarted agent adopts the
//! filters whose program is one of its pinned ones, and removes by name
//! those of a previous generation, without a moment with no filter.

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
};

use super::{Context as _, NetlinkError, is_not_found, links::LinkSummary};
use crate::datapath::plan::Direction;

/// One bpf filter of a clsact qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilter {
    pub ifindex: u32,
    pub direction: Direction,
    pub priority: u16,
    pub handle: u32,
    /// The program's name as the kernel reports it (`TCA_BPF_NAME`).
    pub name: String,
    pub prog_id: u32,
}

impl TcFilter {
    /// A bpf filter out of one message of a filter dump; `None` for other
    /// kinds and for the chain entries that carry no program.
    pub fn from_message(ifindex: u32, direction: Direction, message: &TcMessage) -> Option<Self> {
        let mut is_bpf = false;
        let mut name = None;
        let mut prog_id = None;
        for attribute in &message.attributes {
            match attribute {
                TcAttribute::Kind(kind) => is_bpf = kind == "bpf",
                TcAttribute::Options(options) => {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => prog_id = Some(*id),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !is_bpf {
            return None;
        }
        Some(Self {
            ifindex,
            direction,
            // tcm_info of a filter is TC_H_MAKE(priority << 16, protocol).
            priority: (message.header.info >> 16) as u16,
            handle: message.header.handle.into(),
            name: name?,
            prog_id: prog_id?,
        })
    }
}

/// Every bpf filter on the ingress and egress hooks of `links`. A link
/// that vanished meanwhile (or has no clsact qdisc) simply has none.
pub async fn dump(handle: &Handle, links: &[LinkSummary]) -> Result<Vec<TcFilter>, NetlinkError> {
    let mut found = Vec::new();
    for ifindex in links.iter().map(|l| l.index) {
        let Ok(index) = i32::try_from(ifindex) else { continue };
        for direction in [Direction::Ingress, Direction::Egress] {
            let mut request = handle.traffic_filter(index).get();
            request = match direction {
                Direction::Ingress => request.ingress(),
                Direction::Egress => request.egress(),
            };
            let messages: Vec<TcMessage> = match request.execute().try_collect().await {
                Ok(messages) => messages,
                Err(e) if is_not_found(&e) || is_invalid(&e) => continue,
                Err(e) => return Err(e).context(format!("listing the tc filters of ifindex {ifindex}")),
            };
            found.extend(messages.iter().filter_map(|m| TcFilter::from_message(ifindex, direction, m)));
        }
    }
    Ok(found)
}

/// What the kernel answers for a hook without a clsact qdisc.
fn is_invalid(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::tc::{TcFilterBpfOption, TcHandle, TcOption};

    use super::*;

    fn message(kind: &str, options: Vec<TcOption>) -> TcMessage {
        let mut m = TcMessage::default();
        m.header.info = (49152 << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
        m.header.handle = TcHandle::from(1);
        m.attributes.push(TcAttribute::Kind(kind.to_owned()));
        m.attributes.push(TcAttribute::Options(options));
        m
    }

    #[test]
    fn a_bpf_filter_gives_its_program_priority_and_handle() {
        let m = message(
            "bpf",
            vec![
                TcOption::Bpf(TcFilterBpfOption::ProgName("imds_from_guest".into())),
                TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
            ],
        );
        assert_eq!(
            TcFilter::from_message(7, Direction::Ingress, &m),
            Some(TcFilter {
                ifindex: 7,
                direction: Direction::Ingress,
                priority: 49152,
                handle: 1,
                name: "imds_from_guest".into(),
                prog_id: 42,
            })
        );
    }

    #[test]
    fn other_kinds_and_entries_without_a_program_are_not_filters_of_ours() {
        let no_program = message("bpf", vec![]);
        assert_eq!(TcFilter::from_message(7, Direction::Egress, &no_program), None);
        let u32_filter = message("u32", vec![]);
        assert_eq!(TcFilter::from_message(7, Direction::Egress, &u32_filter), None);
        let mut chain_head = TcMessage::default();
        chain_head.attributes.push(TcAttribute::Kind("bpf".into()));
        assert_eq!(TcFilter::from_message(7, Direction::Egress, &chain_head), None);
    }
}
