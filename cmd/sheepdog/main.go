// Command sheepdog is the single binary of the sheepdog block store: the
// storage daemon (sheep), a local multi-node cluster (local), the admin
// commands (cluster, node, vdi), the certificates of a TLS cluster
// (certs) and the fault simulator (sim).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/peterbourgon/ff/v3"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks a mistake in how the command was called (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// command is one (sub)command. Flags are parsed from anywhere in the
// arguments and from SHEEPDOG_* environment variables.
type command struct {
	name  string
	usage string // arguments after the name
	short string
	long  string
	flags func(fs *flag.FlagSet)
	run   func(ctx context.Context, env *env, args []string) error
	subs  []*command
}

// env is what commands print to.
type env struct {
	stdout io.Writer
	stderr io.Writer
	stdin  io.Reader
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin}, os.Args[1:]))
}

func root() *command {
	return &command{
		name:  "sheepdog",
		short: "distributed block storage for QEMU/KVM",
		subs:  []*command{sheepCommand(), localCommand(), clusterCommand(), nodeCommand(), vdiCommand(), certsCommand(), simCommand(), faultsCommand()},
	}
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, e *env, args []string) int {
	// --tls-dir of an admin command lives in a package variable; one run's
	// value must not reach the next (tests run many in one process).
	defer func() { adminTLSDir = "" }()
	err := dispatch(ctx, e, root(), nil, args)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(e.stderr, "sheepdog: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(e.stderr, "sheepdog: %v\n", err)
	return exitFailure
}

func dispatch(ctx context.Context, e *env, c *command, path []string, args []string) error {
	path = append(path, c.name)
	if len(c.subs) > 0 {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(e.stdout, helpText(c, path, nil))
			if len(args) == 0 {
				return usagef("%s: a subcommand is required", strings.Join(path, " "))
			}
			return flag.ErrHelp
		}
		for _, s := range c.subs {
			if s.name == args[0] {
				return dispatch(ctx, e, s, path, args[1:])
			}
		}
		return usagef("%s: unknown command %q (see %s --help)", strings.Join(path, " "), args[0], strings.Join(path, " "))
	}
	fs := flag.NewFlagSet(strings.Join(path, " "), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if c.flags != nil {
		c.flags(fs)
	}
	pos, err := parseFlags(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(e.stdout, helpText(c, path, fs))
		return flag.ErrHelp
	}
	if err != nil {
		return usagef("%s: %v", strings.Join(path, " "), err)
	}
	return c.run(ctx, e, pos)
}

// parseFlags accepts flags before, between and after positional
// arguments ("--" ends flags), then fills unset flags from SHEEPDOG_*
// environment variables.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	rest := args
	for {
		if err := ff.Parse(fs, rest, ff.WithEnvVarPrefix("SHEEPDOG")); err != nil {
			return nil, err
		}
		rest = fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" && len(args) > 0 {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		rest = rest[1:]
	}
}

func helpText(c *command, path []string, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s", strings.Join(path, " "))
	if len(c.subs) > 0 {
		b.WriteString(" COMMAND [flags]")
	} else {
		if fs != nil {
			b.WriteString(" [flags]")
		}
		if c.usage != "" {
			b.WriteString(" " + c.usage)
		}
	}
	b.WriteString("\n\n")
	if c.short != "" {
		b.WriteString(strings.ToUpper(c.short[:1]) + c.short[1:] + ".\n")
	}
	if c.long != "" {
		b.WriteString("\n" + strings.TrimSpace(c.long) + "\n")
	}
	if len(c.subs) > 0 {
		b.WriteString("\nCommands:\n")
		for _, s := range c.subs {
			fmt.Fprintf(&b, "  %-10s %s\n", s.name, s.short)
		}
		fmt.Fprintf(&b, "\nRun '%s COMMAND --help' for a command's flags.\n", strings.Join(path, " "))
	}
	if fs != nil {
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		if len(names) > 0 {
			sort.Strings(names)
			b.WriteString("\nFlags (each also as environment variable SHEEPDOG_<NAME>):\n")
			for _, n := range names {
				f := fs.Lookup(n)
				def := ""
				if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
					def = fmt.Sprintf(" (default %s)", f.DefValue)
				}
				fmt.Fprintf(&b, "  --%-22s %s%s\n", n, f.Usage, def)
			}
		}
	}
	return b.String()
}
