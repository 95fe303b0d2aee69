package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/carta-fhir/carta/conformance"
)

// listFlag collects a repeatable flag (also comma-separated).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// conformanceCmd runs the conformance suite against any FHIR server: carta conformance --base URL ….
// Progress goes to standard error; the report to --out or standard output, whose last line is always the
// summary. Exit status: 0 when no required test failed or errored, 1 when one did, 2 for a usage mistake.
func conformanceCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("conformance", stderr)
	base := fs.String("base", getenv("CARTA_CONFORMANCE_BASE"), "the FHIR base URL of the server under test")
	configFile := fs.String("config", "", "JSON or YAML file with the inputs (patientA, patientB, practitioner, system; docs/conformance.md)")
	var groups listFlag
	fs.Var(&groups, "group", "run only this group (repeatable, or comma-separated); --list shows them")
	list := fs.Bool("list", false, "list the tests (ID, group, title) and exit")
	format := fs.String("report", "text", "report format: text, json or junit")
	out := fs.String("out", "", "write the report to this file instead of standard output")
	aID := fs.String("patient-a-id", "", "patient A's Patient id (overrides the config file)")
	aTok := fs.String("patient-a-token", "", "patient A's access token")
	bID := fs.String("patient-b-id", "", "patient B's Patient id")
	bTok := fs.String("patient-b-token", "", "patient B's access token")
	prTok := fs.String("practitioner-token", "", "a practitioner's access token (user/ scopes)")
	sysTok := fs.String("system-token", "", "a backend system's access token (system/ scopes)")
	quiet := fs.Bool("quiet", false, "no progress on standard error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	suite := conformance.Default()
	if *list {
		return suite.List(stdout)
	}
	known := map[string]bool{}
	for _, g := range suite.Groups {
		known[g.ID] = true
	}
	for _, g := range groups {
		if !known[g] {
			var ids []string
			for _, gr := range suite.Groups {
				ids = append(ids, gr.ID)
			}
			return usageErr("--group: no group %q (groups: %s)", g, strings.Join(ids, ", "))
		}
	}
	switch *format {
	case "text", "json", "junit":
	default:
		return usageErr("--report is text, json or junit, not %q", *format)
	}
	cfg := &conformance.Config{}
	if *configFile != "" {
		c, err := conformance.LoadConfig(*configFile)
		if err != nil {
			return usageErr("--config: %v", err)
		}
		cfg = c
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{*base, &cfg.Base}, {*aID, &cfg.PatientA.ID}, {*aTok, &cfg.PatientA.Token}, {*bID, &cfg.PatientB.ID},
		{*bTok, &cfg.PatientB.Token}, {*prTok, &cfg.Practitioner.Token}, {*sysTok, &cfg.System.Token}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("%v", err)
	}
	r := &conformance.Runner{Config: cfg}
	if !*quiet {
		r.Progress = func(res conformance.Result) {
			fmt.Fprintf(stderr, "%-5s %s\n", res.Status, res.ID)
		}
	}
	rep := r.Run(ctx, suite, groups)
	w := stdout
	var f *os.File
	if *out != "" {
		var err error
		if f, err = os.Create(*out); err != nil {
			return err
		}
		w = f
	}
	var err error
	switch *format {
	case "json":
		err = rep.WriteJSON(w)
	case "junit":
		err = rep.WriteJUnit(w)
	default:
		err = rep.WriteText(w)
	}
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	if *out != "" || *format == "text" {
		fmt.Fprintln(stdout)
	}
	fmt.Fprintln(stdout, rep.Summary())
	if !rep.OK() {
		return fmt.Errorf("required tests failed: %s", rep.Summary())
	}
	return nil
}
