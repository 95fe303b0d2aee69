// Package conformance is the test suite a health information exchange runs against any FHIR R4 patient-access
// server: SMART discovery and token endpoint behaviour, FHIR REST, the searches a patient app makes, patient
// isolation (a patient's token never reaches another patient's data) and, where the server declares them, the
// patient's rights. It speaks HTTP only and never uses Carta's internals, so it can be pointed at any server.
//
// A Suite holds Groups of Tests. Each test has a stable id, a title, a description and the requirement it checks,
// cited by the source's own anchor. Running a test gives a Result: pass, fail, skip (an input it needs is missing),
// omit (not applicable: the server does not declare the feature) or error (network or suite fault), with messages
// and the HTTP exchanges that decided it.
package conformance

import (
	"context"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// Status is a test's outcome.
type Status string

// Outcomes, from the worst: a group rolls up to its worst required test (error > fail > skip > pass > omit).
const (
	Error Status = "error"
	Fail  Status = "fail"
	Skip  Status = "skip"
	Pass  Status = "pass"
	Omit  Status = "omit"
)

func (s Status) rank() int {
	switch s {
	case Error:
		return 4
	case Fail:
		return 3
	case Skip:
		return 2
	case Pass:
		return 1
	}
	return 0
}

// Test is one check.
type Test struct {
	ID          string
	Title       string
	Description string
	// Requirement cites what is checked by its source's own anchor, e.g. "FHIR R4 http.html#read",
	// "SMART App Launch 2.2.0 conformance.html#using-well-known", "45 CFR 164.524(b)(2)".
	Requirement string
	// Optional tests (SHOULD-level) are reported but do not fail their group or the run.
	Optional bool
	Run      func(t *T)
}

// Group is a set of tests about one area.
type Group struct {
	ID, Title, Description string
	Tests                  []Test
}

// Suite is every group, in order.
type Suite struct{ Groups []Group }

// Default is Carta's suite.
func Default() *Suite {
	return &Suite{Groups: []Group{discoveryGroup(), authGroup(), backendGroup(), launchGroup(), restGroup(), searchGroup(), isolationGroup(), rightsGroup()}}
}

// Result is what running one test gave.
type Result struct {
	ID          string     `json:"id"`
	Group       string     `json:"group"`
	Title       string     `json:"title"`
	Requirement string     `json:"requirement"`
	Optional    bool       `json:"optional,omitempty"`
	Status      Status     `json:"status"`
	Messages    []string   `json:"messages,omitempty"`
	Exchanges   []Exchange `json:"exchanges,omitempty"`
	Duration    float64    `json:"durationSeconds"`
}

// GroupResult rolls up a group.
type GroupResult struct {
	ID      string   `json:"id"`
	Title   string   `json:"title"`
	Status  Status   `json:"status"`
	Results []Result `json:"tests"`
}

// Report is a whole run.
type Report struct {
	Base     string        `json:"base"`
	Started  time.Time     `json:"started"`
	Duration float64       `json:"durationSeconds"`
	Groups   []GroupResult `json:"groups"`
	Passed   int           `json:"passed"`
	Failed   int           `json:"failed"` // failed and errored tests
	Skipped  int           `json:"skipped"`
	Omitted  int           `json:"omitted"`
}

// OK reports whether no required test failed or errored.
func (r *Report) OK() bool {
	for _, g := range r.Groups {
		for _, t := range g.Results {
			if !t.Optional && (t.Status == Fail || t.Status == Error) {
				return false
			}
		}
	}
	return true
}

// Runner runs a suite against one server.
type Runner struct {
	Config   *Config
	Client   *http.Client
	Progress func(r Result) // called after each test (may be nil)

	mu    sync.Mutex
	cache map[string]cached // what one test learned that another uses (the CapabilityStatement, discovery)
}

// Run runs the groups whose ids are in only (all when empty).
func (r *Runner) Run(ctx context.Context, s *Suite, only []string) *Report {
	if r.Client == nil {
		r.Client = &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	rep := &Report{Base: r.Config.Base, Started: time.Now().UTC()}
	for _, g := range s.Groups {
		if len(only) > 0 && !contains(only, g.ID) {
			continue
		}
		gr := GroupResult{ID: g.ID, Title: g.Title, Status: Omit}
		for _, tc := range g.Tests {
			res := r.runOne(ctx, g, tc)
			gr.Results = append(gr.Results, res)
			if !res.Optional && res.Status.rank() > gr.Status.rank() {
				gr.Status = res.Status
			}
			switch res.Status {
			case Pass:
				rep.Passed++
			case Fail, Error:
				rep.Failed++
			case Skip:
				rep.Skipped++
			case Omit:
				rep.Omitted++
			}
			if r.Progress != nil {
				r.Progress(res)
			}
		}
		rep.Groups = append(rep.Groups, gr)
	}
	rep.Duration = time.Since(rep.Started).Seconds()
	return rep
}

// stop ends a test early with a status.
type stop struct{}

func (r *Runner) runOne(ctx context.Context, g Group, tc Test) (res Result) {
	t := &T{ctx: ctx, r: r, status: Pass}
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			if _, ok := p.(stop); !ok {
				t.status = Error
				t.msgs = append(t.msgs, fmt.Sprintf("suite fault: %v\n%s", p, debug.Stack()))
			}
		}
		res = Result{ID: tc.ID, Group: g.ID, Title: tc.Title, Requirement: tc.Requirement, Optional: tc.Optional,
			Status: t.status, Messages: t.msgs, Exchanges: t.exchanges, Duration: time.Since(start).Seconds()}
	}()
	tc.Run(t)
	return
}

// T is a running test.
type T struct {
	ctx       context.Context
	r         *Runner
	status    Status
	msgs      []string
	exchanges []Exchange
	shown     map[string]bool // cached lookups whose exchanges this test already shows
}

// Config is the run's inputs.
func (t *T) Config() *Config { return t.r.Config }

// Failf records a failure and goes on (the test ends as failed).
func (t *T) Failf(format string, args ...any) {
	if t.status.rank() < Fail.rank() {
		t.status = Fail
	}
	t.msgs = append(t.msgs, fmt.Sprintf(format, args...))
}

// Fatalf records a failure and ends the test.
func (t *T) Fatalf(format string, args ...any) {
	t.Failf(format, args...)
	panic(stop{})
}

// Skipf ends the test as skipped: an input it needs is missing.
func (t *T) Skipf(format string, args ...any) {
	t.status = Skip
	t.msgs = append(t.msgs, fmt.Sprintf(format, args...))
	panic(stop{})
}

// Omitf ends the test as not applicable: the server does not declare what it checks.
func (t *T) Omitf(format string, args ...any) {
	t.status = Omit
	t.msgs = append(t.msgs, fmt.Sprintf(format, args...))
	panic(stop{})
}

// Errorf ends the test as errored: the network or the suite failed, not the server's conformance.
func (t *T) Errorf(format string, args ...any) {
	t.status = Error
	t.msgs = append(t.msgs, fmt.Sprintf(format, args...))
	panic(stop{})
}

// Logf adds a message without changing the outcome.
func (t *T) Logf(format string, args ...any) { t.msgs = append(t.msgs, fmt.Sprintf(format, args...)) }

// Check fails (and goes on) when ok is false.
func (t *T) Check(ok bool, format string, args ...any) bool {
	if !ok {
		t.Failf(format, args...)
	}
	return ok
}

// remember caches what a test learned (once per run), with the HTTP exchanges that learned it: a later test
// that uses the value shows them too, so its report says what decided it.
func (t *T) remember(key string, f func() (any, error)) (any, error) {
	r := t.r
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]cached{}
	}
	c, ok := r.cache[key]
	r.mu.Unlock()
	if !ok {
		before := len(t.exchanges)
		v, err := f()
		c = cached{v: v, err: err, exchanges: append([]Exchange(nil), t.exchanges[before:]...)}
		if t.shown == nil {
			t.shown = map[string]bool{}
		}
		t.shown[key] = true
		r.mu.Lock()
		r.cache[key] = c
		r.mu.Unlock()
		return c.v, c.err
	}
	if !t.shown[key] {
		if t.shown == nil {
			t.shown = map[string]bool{}
		}
		t.shown[key] = true
		t.exchanges = append(t.exchanges, c.exchanges...)
	}
	return c.v, c.err
}

type cached struct {
	v         any
	err       error
	exchanges []Exchange
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
