package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
)

// version is set at build time (-ldflags "-X main.version=..."); otherwise the VCS revision is used.
var version = ""

func carta() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

const usage = `carta — FHIR R4 server for patient access and patient rights

Usage:
  carta serve   [--addr 127.0.0.1:8080] [--data ./carta-data] [--base-url URL]   run the server
  carta token   (--patient ID | --user Practitioner/ID | --user RelatedPerson/ID | --system) --scope "SCOPES" [--ttl 1h]
                                                                               mint an access token
  carta import  [--data DIR] FILE|DIR...                                       load Bundles and resources
  carta clients add --id ID --kind public|confidential|backend [--redirect-uri URI]... [--scope S] [--jwks FILE|--jwks-url URL]
  carta clients list | remove --id ID                                          manage SMART apps and backend services
  carta users add --username U --password P|- (--patient ID|--practitioner ID|--related-person ID)
  carta users list | passwd --username U --password P|- | disable --username U  manage logins
  carta launch --client ID --patient ID [--user Practitioner/ID]               print an EHR launch URL
  carta overdue [--json]                                                       list open patient-rights requests past due
  carta conformance --base URL [--config FILE] [--group ID]... [--list] [--report text|json|junit] [--out FILE]
                                                                               test any FHIR server for patient access
  carta version                                                                print the version

Environment: CARTA_ADDR, CARTA_DATA_DIR, CARTA_DATABASE_URL (postgres://...), CARTA_REDIS_URL, CARTA_BASE_URL,
CARTA_LOG_LEVEL (debug, info, warn, error), CARTA_JURISDICTIONS, CARTA_CONTACT_NAME, CARTA_CONTACT_PHONE …
(carta serve --help lists them all). Flags win over the environment.
`

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

// run is the whole program: main only adds signals and the exit.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if path := getenv("CARTA_CPUPROFILE"); path != "" {
		// For diagnosing a slow command: CARTA_CPUPROFILE=cpu.out carta import ...; go tool pprof cpu.out
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], getenv, stdout, stderr)
	case "token":
		err = token(ctx, args[1:], getenv, stdout, stderr)
	case "import":
		err = importCmd(ctx, args[1:], getenv, stdout, stderr)
	case "clients":
		err = clientsCmd(ctx, args[1:], getenv, stdin, stdout, stderr)
	case "users":
		err = usersCmd(ctx, args[1:], getenv, stdin, stdout, stderr)
	case "launch":
		err = launchCmd(ctx, args[1:], getenv, stdout, stderr)
	case "overdue":
		err = overdueCmd(ctx, args[1:], getenv, stdout, stderr)
	case "conformance":
		err = conformanceCmd(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "carta", carta())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "carta: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		if !errors.Is(err, flag.ErrHelp) && err.Error() != errUsage.Error() {
			fmt.Fprintln(stderr, "carta:", strings.TrimSuffix(err.Error(), ": "+errUsage.Error()))
		}
		return 2
	default:
		fmt.Fprintln(stderr, "carta:", err)
		return 1
	}
}

// envOr returns the environment value of key, or def.
func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("carta "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func usageErr(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errUsage)...)
}
