//! gVisor's remote-sink framing: the handshake and the 8-byte packet header.
//!
//! Every packet after the handshake is `u16 header_size`, `u16 message_type`,
//! `u32 dropped_count` (little-endian), then the protobuf payload at offset
//! `header_size` (8 today; larger headers from a newer gVisor are skipped).
//! Nothing here trusts the packet: every length is checked.

use protobuf::Message;

use crate::proto::common::Handshake;

/// Size of the header gVisor writes today.
pub const HEADER_LEN: usize = 8;

/// The handshake version Safehouse speaks (gVisor's `wire.CurrentVersion`).
pub const PROTOCOL_VERSION: u32 = 1;

/// A parsed packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the payload.
    pub header_size: u16,
    /// gVisor's `MessageType`.
    pub message_type: u16,
    /// Points gVisor failed to send so far on this connection (wraps at 2^32).
    pub dropped_count: u32,
}

/// Why a packet's framing is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("packet of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    ShortHeader {
        /// Packet length.
        len: usize,
    },
    /// header_size smaller than the fields it must hold.
    #[error("header_size {header_size} is smaller than {HEADER_LEN}")]
    HeaderTooSmall {
        /// The claimed header size.
        header_size: u16,
    },
    /// header_size points past the end of the packet.
    #[error("header_size {header_size} is beyond the {len}-byte packet")]
    HeaderBeyondPacket {
        /// The claimed header size.
        header_size: u16,
        /// Packet length.
        len: usize,
    },
    /// The handshake packet is not a Handshake message.
    #[error("handshake is not a valid protobuf: {0}")]
    BadHandshake(String),
    /// The peer speaks an older protocol than version 1.
    #[error("peer protocol version {0} is older than {PROTOCOL_VERSION}")]
    OldVersion(u32),
}

/// Splits a packet into its header and payload.
pub fn split_packet(packet: &[u8]) -> Result<(Header, &[u8]), WireError> {
    let fixed: &[u8; HEADER_LEN] = packet
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::ShortHeader { len: packet.len() })?;
    let header = Header {
        header_size: u16::from_le_bytes([fixed[0], fixed[1]]),
        message_type: u16::from_le_bytes([fixed[2], fixed[3]]),
        dropped_count: u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
    };
    if usize::from(header.header_size) < HEADER_LEN {
        return Err(WireError::HeaderTooSmall {
            header_size: header.header_size,
        });
    }
    let payload =
        packet
            .get(usize::from(header.header_size)..)
            .ok_or(WireError::HeaderBeyondPacket {
                header_size: header.header_size,
                len: packet.len(),
            })?;
    Ok((header, payload))
}

/// Builds a packet: an 8-byte header followed by `payload`.
pub fn frame(message_type: u16, dropped_count: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    out.extend_from_slice(&message_type.to_le_bytes());
    out.extend_from_slice(&dropped_count.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the peer's handshake and returns its protocol version.
pub fn parse_handshake(packet: &[u8]) -> Result<u32, WireError> {
    let hs =
        Handshake::parse_from_bytes(packet).map_err(|e| WireError::BadHandshake(e.to_string()))?;
    if hs.version < PROTOCOL_VERSION {
        return Err(WireError::OldVersion(hs.version));
    }
    Ok(hs.version)
}

/// The newest `dropped_count` seen on a connection, turning each header's running count into
/// the number of points newly lost.
///
/// gVisor's count only grows, but packets can reach the sink out of order (several tasks send
/// concurrently), so a header may carry an older, smaller count than one already seen. Counts
/// are compared as serial numbers (RFC 1982): a count less than 2^31 ahead of the newest is
/// newer (the difference is what was lost, also across the u32 wrap); anything else is an older
/// count arriving late and adds nothing. The total reported is therefore exactly the newest
/// count seen (modulo 2^32 wraps): it never goes backwards and never wraps to ~4.29e9.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounter {
    newest: u32,
}

impl DropCounter {
    /// Takes a header's `dropped_count`; returns how many points were newly lost (0 for an
    /// unchanged or older count).
    pub fn observe(&mut self, dropped_count: u32) -> u64 {
        let ahead = dropped_count.wrapping_sub(self.newest);
        if ahead == 0 || ahead >= 1 << 31 {
            return 0;
        }
        self.newest = dropped_count;
        u64::from(ahead)
    }

    /// The newest count seen.
    pub fn newest(&self) -> u32 {
        self.newest
    }
}

/// The handshake bytes for `version` (`08 01` for version 1).
pub fn handshake_bytes(version: u32) -> Vec<u8> {
    let hs = Handshake {
        version,
        ..Handshake::default()
    };
    // Serialising a message with one scalar field cannot fail.
    hs.write_to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_drop_counts_are_exact_and_never_wrap() {
        let mut c = DropCounter::default();
        let seen: Vec<u64> = [0, 5, 3, 5, 4, 9, 0, 9, 12]
            .into_iter()
            .map(|n| c.observe(n))
            .collect();
        assert_eq!(seen, vec![0, 5, 0, 0, 0, 4, 0, 0, 3]);
        assert_eq!(
            seen.iter().sum::<u64>(),
            12,
            "the total is the newest count"
        );
        assert_eq!(c.newest(), 12);
    }

    #[test]
    fn drop_counts_follow_gvisors_counter_across_its_wrap() {
        let mut c = DropCounter::default();
        assert_eq!(
            c.observe(u32::MAX - 1),
            0,
            "more than 2^31 ahead of 0 reads as older"
        );
        let mut c = DropCounter::default();
        let mut total = 0;
        for n in [
            1u32 << 30,
            (1 << 31) - 1,
            3 << 30,
            u32::MAX - 2,
            (3 << 30) + 7,
            4,
            2,
        ] {
            let lost = c.observe(n);
            assert!(lost < 1 << 31, "{n} gave {lost}");
            total += lost;
        }
        // 0 -> u32::MAX - 2 -> wraps to 4: u32::MAX - 2 + 7 lost in all, no more.
        assert_eq!(total, u64::from(u32::MAX - 2) + 7);
    }

    #[test]
    fn handshake_is_the_documented_two_bytes() {
        assert_eq!(handshake_bytes(1), vec![0x08, 0x01]);
        assert_eq!(parse_handshake(&[0x08, 0x01]), Ok(1));
        assert_eq!(parse_handshake(&[0x08, 0x02]), Ok(2));
        assert_eq!(parse_handshake(&[]), Err(WireError::OldVersion(0)));
        assert!(matches!(
            parse_handshake(&[0x0a, 0xff]),
            Err(WireError::BadHandshake(_))
        ));
    }

    #[test]
    fn splits_header_and_rejects_bad_sizes() {
        let p = frame(7, 3, b"xyz");
        let (h, payload) = split_packet(&p).unwrap_or((
            Header {
                header_size: 0,
                message_type: 0,
                dropped_count: 0,
            },
            b"",
        ));
        assert_eq!((h.header_size, h.message_type, h.dropped_count), (8, 7, 3));
        assert_eq!(payload, b"xyz");
        assert_eq!(
            split_packet(&p[..5]),
            Err(WireError::ShortHeader { len: 5 })
        );
        let mut small = p.clone();
        small[0] = 4;
        assert_eq!(
            split_packet(&small),
            Err(WireError::HeaderTooSmall { header_size: 4 })
        );
        let mut big = p.clone();
        big[0] = 200;
        assert_eq!(
            split_packet(&big),
            Err(WireError::HeaderBeyondPacket {
                header_size: 200,
                len: 11
            })
        );
        // A larger header from a newer gVisor: payload starts after it.
        let mut longer = vec![12, 0, 7, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        longer.extend_from_slice(b"p");
        assert_eq!(
            split_packet(&longer).map(|(_, p)| p.to_vec()),
            Ok(b"p".to_vec())
        );
    }
}
