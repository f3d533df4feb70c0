"""The environment network: one private L2 segment per compose network, a resolver on each, every
microVM and host container a member (docs/design.md, "The environment network").

- `plan`: pure. From the spec (and the addresses a previous `up` handed out) to segments, members,
  their addresses, MACs and the names each answers to.
- `host`: the side effects on this host: the environment's network namespace, a bridge per
  segment inside it, taps for microVMs, veth pairs for host containers, dnsmasq per resolver.
"""
