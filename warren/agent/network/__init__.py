"""The node side of service networking: bridges, the WireGuard mesh, nftables VIPs, DNS."""
