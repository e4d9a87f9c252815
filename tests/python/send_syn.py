"""Send one TCP SYN for 169.254.169.254:80 as a raw Ethernet frame.

Usage: send_syn.py IFACE SRC_IP [VLAN_ID]

With VLAN_ID the frame carries an 802.1Q tag, as a guest's VLAN interface
would send it; the receiving kernel moves such a tag into skb metadata
before tc sees the frame. This needs no VLAN support in the sending kernel.
"""

import socket
import struct
import sys


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def main(iface, src_ip, vlan=None):
    src = socket.inet_aton(src_ip)
    dst = socket.inet_aton("169.254.169.254")
    tcp = struct.pack("!HHIIBBHHH", 40123, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    eth = b"\xff" * 6 + mac
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    eth += struct.pack("!H", 0x0800)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    s.send(eth + ip + tcp)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
