package faults

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
)

// Link is one direction of traffic between two loopback addresses of the
// namespace: packets from From to To.
type Link struct{ From, To string }

// Firewall drops traffic on links. Apply replaces the whole set of dropped
// links at once.
type Firewall interface {
	Mechanism() string
	Apply(ctx context.Context, drops []Link) error
}

// ErrNoFirewall means nftables does not work on this machine.
var ErrNoFirewall = errors.New("no network fault mechanism available")

// nftFirewall drops packets in the namespace's input hook: a dropped
// packet is lost silently, as on a real network (a drop in the output hook
// would fail the sender's connect with EPERM at once).
type nftFirewall struct{ ns *Namespace }

const nftTable = "sdfaults"

// Network mechanisms a run can use (Config.Net).
const (
	NetAuto  = "auto"     // nftables where it works, else the TCP proxy
	NetNFT   = "nftables" // drop rules in the namespace's input hook
	NetProxy = "proxy"    // a fault-injecting TCP proxy on every port (Proxy)
)

// NewFirewall returns the fault mechanism of ns that mode asks for. With
// NetAuto it is nftables when nft is installed and works in the
// namespace, else the TCP proxy (the log says why).
func NewFirewall(ctx context.Context, ns *Namespace, mode string, log *slog.Logger) (Firewall, error) {
	switch mode {
	case NetProxy:
		return NewProxy(ns, log), nil
	case NetNFT, NetAuto, "":
	default:
		return nil, fmt.Errorf("unknown network fault mechanism %q (want %s, %s or %s)", mode, NetAuto, NetNFT, NetProxy)
	}
	fw, err := newNFT(ctx, ns)
	if err == nil {
		return fw, nil
	}
	if mode == NetNFT {
		return nil, err
	}
	log.Warn("nftables does not work here: network faults go through a TCP proxy", "err", err)
	return NewProxy(ns, log), nil
}

func newNFT(ctx context.Context, ns *Namespace) (Firewall, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("%w: nft is not installed (%v)", ErrNoFirewall, err)
	}
	fw := &nftFirewall{ns: ns}
	if err := fw.Apply(ctx, nil); err != nil {
		return nil, fmt.Errorf("%w: nftables does not work in namespace %s (%v)", ErrNoFirewall, ns.Name, err)
	}
	return fw, nil
}

func (f *nftFirewall) Mechanism() string { return "nftables" }

func (f *nftFirewall) Apply(ctx context.Context, drops []Link) error {
	var b strings.Builder
	fmt.Fprintf(&b, "add table inet %s\n", nftTable)
	fmt.Fprintf(&b, "flush table inet %s\n", nftTable)
	fmt.Fprintf(&b, "add chain inet %s in { type filter hook input priority 0; policy accept; }\n", nftTable)
	drops = slices.Clone(drops)
	slices.SortFunc(drops, func(a, b Link) int { return strings.Compare(a.From+" "+a.To, b.From+" "+b.To) })
	drops = slices.Compact(drops)
	for _, l := range drops {
		fmt.Fprintf(&b, "add rule inet %s in ip saddr %s ip daddr %s drop\n", nftTable, l.From, l.To)
	}
	if out, err := f.ns.RunInput(ctx, b.String(), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nft -f: %w: %s", err, out)
	}
	return nil
}
