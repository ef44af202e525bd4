"""Print the IPv4 address of the network interface named by the first argument (exit 1 if it
has none): the stand-in entrypoint's `ip -4 addr show IFACE` (no iproute2 in the image)."""

import fcntl
import socket
import struct
import sys

SIOCGIFADDR = 0x8915  # linux/sockios.h

with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    try:
        name = struct.pack("256s", sys.argv[1][:15].encode())
        packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, name)
    except OSError:
        sys.exit(1)
print(socket.inet_ntoa(packed[20:24]))
