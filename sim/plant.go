package sim

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sheepdog-go/sheepdog/core"
)

// Plants are the planted bugs `--plant` accepts.
var Plants = []struct {
	Name string
	Bugs core.Bugs
	Doc  string
}{
	{"ack-early", core.Bugs{AckEarly: true}, "acknowledge a write before every replica has it"},
	{"read-any", core.Bugs{ReadAny: true}, "serve reads from any replica, without lease or recovery"},
	{"no-epoch-check", core.Bugs{NoEpochCheck: true}, "accept requests and replication from an older epoch"},
	{"skip-recovery", core.Bugs{SkipRecovery: true}, "a new replica serves without recovering"},
	{"no-revoke", core.Bugs{NoRevoke: true}, "a primary serves an object it handed over to the attacher without taking it back"},
	{"cow-in-place", core.Bugs{CowInPlace: true}, "a write to a shared object modifies it in place"},
	{"reclaim-shared", core.Bugs{ReclaimShared: true}, "delete frees an object that a clone still references"},
}

// PlantNames lists the planted bugs' names.
func PlantNames() []string {
	var out []string
	for _, p := range Plants {
		out = append(out, p.Name)
	}
	return out
}

// ParsePlant reads a comma-separated list of planted bug names.
func ParsePlant(s string) (core.Bugs, error) {
	var b core.Bugs
	if s == "" || s == "none" {
		return b, nil
	}
	for _, name := range strings.Split(s, ",") {
		i := slices.IndexFunc(Plants, func(p struct {
			Name string
			Bugs core.Bugs
			Doc  string
		}) bool {
			return p.Name == strings.TrimSpace(name)
		})
		if i < 0 {
			var names []string
			for _, p := range Plants {
				names = append(names, p.Name)
			}
			return b, fmt.Errorf("unknown planted bug %q (known: %s)", name, strings.Join(names, ", "))
		}
		p := Plants[i].Bugs
		b.AckEarly = b.AckEarly || p.AckEarly
		b.ReadAny = b.ReadAny || p.ReadAny
		b.NoEpochCheck = b.NoEpochCheck || p.NoEpochCheck
		b.SkipRecovery = b.SkipRecovery || p.SkipRecovery
		b.NoRevoke = b.NoRevoke || p.NoRevoke
		b.CowInPlace = b.CowInPlace || p.CowInPlace
		b.ReclaimShared = b.ReclaimShared || p.ReclaimShared
	}
	return b, nil
}

// PlantName names the planted bugs in b ("" for none).
func PlantName(b core.Bugs) string {
	var names []string
	for _, p := range Plants {
		if (p.Bugs.AckEarly && b.AckEarly) || (p.Bugs.ReadAny && b.ReadAny) ||
			(p.Bugs.NoEpochCheck && b.NoEpochCheck) || (p.Bugs.SkipRecovery && b.SkipRecovery) || (p.Bugs.NoRevoke && b.NoRevoke) ||
			(p.Bugs.CowInPlace && b.CowInPlace) || (p.Bugs.ReclaimShared && b.ReclaimShared) {
			names = append(names, p.Name)
		}
	}
	return strings.Join(names, ",")
}
