package fhir

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Page size limits.
const (
	DefaultCount = 20
	MaxCount     = 1000
	// MaxIncludes bounds the resources _include and _revinclude add to one page.
	MaxIncludes = 1000
	// maxChainDepth bounds chained and _has parameters.
	maxChainDepth = 3
)

// Query is a parsed search: the resource type, the criteria (all must match), and the result controls.
type Query struct {
	Type    string
	Clauses []Clause
	Sort    []SortKey
	Count   int
	Cursor  string
	// Total is "", "none", "estimate" or "accurate".
	Total       string
	Summary     string // "", "true", "text", "data", "count", "false"
	Elements    []string
	Includes    []Include
	RevIncludes []Include
	// Warnings are parameters ignored under Prefer: handling=lenient.
	Warnings []Issue
	// Params is the query in canonical form, for self/next links.
	Params url.Values
}

// Clause is one search criterion: a parameter with its values (any of which may match).
type Clause struct {
	Param    *SearchParam
	Modifier string // exact, contains, missing, not, text, below, above, or a resource type for references
	Values   []Value
	// Chain is set for chained parameters (subject:Patient.name=x): the reference must point at a resource of one
	// of the targets' types that matches that target's clause.
	Chain []ChainTarget
	// Has is set for reverse chains (_has:Observation:patient:code=x).
	Has *HasClause
}

// ChainTarget is one resource type a chained parameter may reach, with the criterion parsed for that type.
type ChainTarget struct {
	Type   string
	Clause Clause
}

// HasClause is a reverse chain: resources of Type whose Ref parameter points at the candidate and that match
// Clause.
type HasClause struct {
	Type   string
	Ref    *SearchParam
	Clause Clause
}

// Value is one value of a clause, parsed for its parameter type.
type Value struct {
	Raw    string
	Prefix string // eq ne gt lt ge le sa eb ap (date, number, quantity)
	// token
	System    string
	Code      string
	HasSystem bool // system|code or |code was written
	// string (normalized) and uri
	Str string
	// date: [Lo, Hi) in Unix microseconds
	Lo, Hi int64
	// number and quantity: the value and the range its precision implies
	Num, NumLo, NumHi float64
	// reference
	RefType, RefID, RefURL string
	// :missing
	Missing bool
}

// SortKey is one _sort parameter.
type SortKey struct {
	Param *SearchParam
	Desc  bool
}

// Include is an _include or _revinclude: resources of Type reached through Param (optionally only of Target).
type Include struct {
	Type    string
	Param   *SearchParam
	Target  string
	Iterate bool
}

// QueryOptions carry what parsing needs to know about the server and the request.
type QueryOptions struct {
	Base    string         // FHIR base URL, to make absolute references local
	Loc     *time.Location // zone for dates written without one
	Lenient bool           // Prefer: handling=lenient
	Now     time.Time      // for ap
}

// Result-control parameters that are not criteria.
var controlParams = map[string]bool{
	"_count": true, "_sort": true, "_include": true, "_revinclude": true, "_summary": true, "_elements": true,
	"_total": true, "_format": true, "_pretty": true, "_cursor": true,
}

// ParseQuery parses the parameters of a search on typ. Unknown or malformed parameters give a 400 *Error naming
// the parameter, or, under lenient handling, a warning.
func ParseQuery(typ string, params url.Values, opt QueryOptions) (*Query, error) {
	if opt.Loc == nil {
		opt.Loc = time.UTC
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	q := &Query{Type: typ, Count: DefaultCount, Params: url.Values{}}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var issues []Issue
	bad := func(name, format string, args ...any) {
		issues = append(issues, Issue{Severity: SeverityError, Code: IssueInvalid, Expression: name, Diagnostics: fmt.Sprintf(format, args...)})
	}
	for _, name := range keys {
		vals := params[name]
		base := strings.SplitN(name, ":", 2)[0]
		if controlParams[base] {
			if err := q.control(typ, name, vals); err != nil {
				fe, _ := AsError(err)
				issues = append(issues, fe.Issues...)
				continue
			}
			if name != "_cursor" && name != "_format" && name != "_pretty" {
				q.Params[name] = vals
			}
			continue
		}
		for _, raw := range vals {
			c, err := parseClause(typ, name, raw, opt, 0)
			if err != nil {
				fe, _ := AsError(err)
				if opt.Lenient && fe != nil && fe.Status == http.StatusBadRequest && isUnknownParam(fe) {
					for _, is := range fe.Issues {
						is.Severity = SeverityWarning
						q.Warnings = append(q.Warnings, is)
					}
					continue
				}
				if fe != nil {
					issues = append(issues, fe.Issues...)
				} else {
					bad(name, "%v", err)
				}
				continue
			}
			q.Clauses = append(q.Clauses, c)
			q.Params.Add(name, raw)
		}
	}
	if len(issues) > 0 {
		return nil, &Error{Status: http.StatusBadRequest, Issues: issues}
	}
	return q, nil
}

// errUnknownParam marks the issue of an unknown parameter, which lenient handling may ignore.
const unknownParamMarker = "is not a search parameter of "

func isUnknownParam(e *Error) bool {
	for _, is := range e.Issues {
		if !strings.Contains(is.Diagnostics, unknownParamMarker) {
			return false
		}
	}
	return true
}

func (q *Query) control(typ, name string, vals []string) error {
	last := vals[len(vals)-1]
	switch {
	case name == "_count":
		n, err := strconv.Atoi(last)
		if err != nil || n < 0 {
			return At(http.StatusBadRequest, IssueInvalid, "_count", "_count must be a whole number of 0 or more, got %q", last)
		}
		q.Count = min(n, MaxCount)
	case name == "_cursor":
		q.Cursor = last
	case name == "_total":
		switch last {
		case "none", "estimate", "accurate":
			q.Total = last
		default:
			return At(http.StatusBadRequest, IssueInvalid, "_total", "_total must be none, estimate or accurate, got %q", last)
		}
	case name == "_summary":
		switch last {
		case "true", "text", "data", "count", "false":
			q.Summary = last
		default:
			return At(http.StatusBadRequest, IssueInvalid, "_summary", "_summary must be true, text, data, count or false, got %q", last)
		}
	case name == "_elements":
		q.Elements = nil
		for _, v := range vals {
			for _, e := range strings.Split(v, ",") {
				e = strings.TrimSpace(e)
				if e == "" {
					continue
				}
				if strings.Contains(e, ".") {
					e = e[strings.Index(e, ".")+1:]
				}
				q.Elements = append(q.Elements, e)
			}
		}
	case name == "_format", name == "_pretty":
	case name == "_sort":
		q.Sort = nil
		for _, v := range vals {
			for _, s := range strings.Split(v, ",") {
				s = strings.TrimSpace(s)
				desc := strings.HasPrefix(s, "-")
				code := strings.TrimPrefix(s, "-")
				p := Params().Lookup(typ, code)
				if p == nil {
					return At(http.StatusBadRequest, IssueInvalid, "_sort", "cannot sort by %q: %s%s (known: %s)", code, unknownParamMarker, typ, Params().Codes(typ))
				}
				if p.Type == TypeReference {
					return At(http.StatusBadRequest, IssueNotSupported, "_sort", "sorting by reference parameter %q is not supported", code)
				}
				q.Sort = append(q.Sort, SortKey{Param: p, Desc: desc})
			}
		}
	case name == "_include" || name == "_include:iterate" || name == "_revinclude" || name == "_revinclude:iterate":
		rev := strings.HasPrefix(name, "_revinclude")
		for _, v := range vals {
			inc, err := parseInclude(typ, name, v, rev)
			if err != nil {
				return err
			}
			for i := range inc {
				inc[i].Iterate = strings.HasSuffix(name, ":iterate")
			}
			if rev {
				q.RevIncludes = append(q.RevIncludes, inc...)
			} else {
				q.Includes = append(q.Includes, inc...)
			}
		}
	default:
		return At(http.StatusBadRequest, IssueNotSupported, name, "modifier on %s is not supported", name)
	}
	return nil
}

func parseInclude(typ, name, v string, rev bool) ([]Include, error) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		if v == "*" && !rev {
			var out []Include
			for _, p := range Params().For(typ) {
				if p.Type == TypeReference {
					out = append(out, Include{Type: typ, Param: p})
				}
			}
			return out, nil
		}
		return nil, At(http.StatusBadRequest, IssueInvalid, name, "%s must be Type:parameter or Type:parameter:TargetType, got %q", name, v)
	}
	if !R4().IsResourceType(parts[0]) {
		return nil, At(http.StatusBadRequest, IssueInvalid, name, "%q in %s=%s is not a resource type", parts[0], name, v)
	}
	var ps []*SearchParam
	if parts[1] == "*" {
		for _, p := range Params().For(parts[0]) {
			if p.Type == TypeReference {
				ps = append(ps, p)
			}
		}
	} else {
		p := Params().Lookup(parts[0], parts[1])
		if p == nil || p.Type != TypeReference {
			return nil, At(http.StatusBadRequest, IssueInvalid, name, "%q is not a reference search parameter of %s", parts[1], parts[0])
		}
		ps = append(ps, p)
	}
	target := ""
	if len(parts) == 3 {
		target = parts[2]
		if !R4().IsResourceType(target) {
			return nil, At(http.StatusBadRequest, IssueInvalid, name, "%q in %s=%s is not a resource type", target, name, v)
		}
	}
	if !rev && parts[0] != typ && !strings.HasSuffix(name, ":iterate") {
		return nil, At(http.StatusBadRequest, IssueInvalid, name, "_include=%s names %s, but this is a search of %s (use _include:iterate for included resources)", v, parts[0], typ)
	}
	out := make([]Include, 0, len(ps))
	for _, p := range ps {
		out = append(out, Include{Type: parts[0], Param: p, Target: target})
	}
	return out, nil
}

// parseClause parses one criterion "name=raw" on typ. depth counts chain levels.
func parseClause(typ, name, raw string, opt QueryOptions, depth int) (Clause, error) {
	if depth > maxChainDepth {
		return Clause{}, At(http.StatusBadRequest, IssueTooCostly, name, "chains deeper than %d levels are not supported", maxChainDepth)
	}
	if strings.HasPrefix(name, "_has:") {
		return parseHas(typ, name, raw, opt, depth)
	}
	// Chained: param[:Type].rest
	if dot := strings.IndexByte(name, '.'); dot > 0 {
		head, rest := name[:dot], name[dot+1:]
		code, mod, _ := strings.Cut(head, ":")
		p := Params().Lookup(typ, code)
		if p == nil {
			return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%q %s%s (known: %s)", code, unknownParamMarker, typ, Params().Codes(typ))
		}
		if p.Type != TypeReference {
			return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "cannot chain through %q: it is a %s parameter, not a reference", code, p.Type)
		}
		targets := p.Targets
		if mod != "" {
			if !contains(p.Targets, mod) {
				return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%s:%s: %s cannot point to a %s", code, mod, code, mod)
			}
			targets = []string{mod}
		}
		innerCode := strings.SplitN(strings.SplitN(rest, ".", 2)[0], ":", 2)[0]
		var chain []ChainTarget
		var firstErr error
		for _, t := range targets {
			if Params().Lookup(t, innerCode) == nil {
				continue
			}
			c, err := parseClause(t, rest, raw, opt, depth+1)
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			chain = append(chain, ChainTarget{Type: t, Clause: c})
		}
		if len(chain) == 0 {
			if firstErr != nil {
				return Clause{}, firstErr
			}
			return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%q %sany type %s can point to", innerCode, unknownParamMarker, code)
		}
		return Clause{Param: p, Chain: chain}, nil
	}
	code, mod, _ := strings.Cut(name, ":")
	p := Params().Lookup(typ, code)
	if p == nil {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%q %s%s (known: %s)", code, unknownParamMarker, typ, Params().Codes(typ))
	}
	c := Clause{Param: p, Modifier: mod}
	if err := checkModifier(p, mod); err != nil {
		return Clause{}, At(http.StatusBadRequest, IssueNotSupported, name, "%v", err)
	}
	if mod == "missing" {
		if raw != "true" && raw != "false" {
			return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, ":missing takes true or false, got %q", raw)
		}
		c.Values = []Value{{Raw: raw, Missing: raw == "true"}}
		return c, nil
	}
	for _, rv := range splitValues(raw) {
		v, err := parseValue(p, mod, rv, opt)
		if err != nil {
			return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%s=%s: %v", name, rv, err)
		}
		c.Values = append(c.Values, v)
	}
	if len(c.Values) == 0 {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%s has no value", name)
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

func checkModifier(p *SearchParam, mod string) error {
	if mod == "" || mod == "missing" {
		return nil
	}
	ok := false
	switch p.Type {
	case TypeString:
		ok = mod == "exact" || mod == "contains"
	case TypeToken:
		ok = mod == "not" || mod == "text"
	case TypeReference:
		ok = R4().IsResourceType(mod) && contains(p.Targets, mod)
		if !ok && R4().IsResourceType(mod) {
			return fmt.Errorf("%s:%s: %s cannot point to a %s", p.Code, mod, p.Code, mod)
		}
	case TypeURI:
		ok = mod == "below" || mod == "above"
	}
	if !ok {
		return fmt.Errorf("modifier :%s is not supported on %s parameter %s", mod, p.Type, p.Code)
	}
	return nil
}

func parseHas(typ, name, raw string, opt QueryOptions, depth int) (Clause, error) {
	// _has:Type:refParam:rest
	parts := strings.SplitN(name, ":", 4)
	if len(parts) != 4 {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "_has must be _has:Type:reference:parameter")
	}
	hasType, refCode, rest := parts[1], parts[2], parts[3]
	if !R4().IsResourceType(hasType) {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%q is not a resource type", hasType)
	}
	ref := Params().Lookup(hasType, refCode)
	if ref == nil || ref.Type != TypeReference {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%q is not a reference search parameter of %s", refCode, hasType)
	}
	if !contains(ref.Targets, typ) {
		return Clause{}, At(http.StatusBadRequest, IssueInvalid, name, "%s:%s cannot point to a %s", hasType, refCode, typ)
	}
	inner, err := parseClause(hasType, rest, raw, opt, depth+1)
	if err != nil {
		return Clause{}, err
	}
	return Clause{Has: &HasClause{Type: hasType, Ref: ref, Clause: inner}}, nil
}

// splitValues splits a comma-separated value list, honouring \, escapes.
func splitValues(raw string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '\\' && i+1 < len(raw) && (raw[i+1] == ',' || raw[i+1] == '\\' || raw[i+1] == '$' || raw[i+1] == '|') {
			if raw[i+1] == '|' {
				b.WriteByte('\\') // keep: split at | happens later
			}
			b.WriteByte(raw[i+1])
			i++
			continue
		}
		if c == ',' {
			out = append(out, b.String())
			b.Reset()
			continue
		}
		b.WriteByte(c)
	}
	out = append(out, b.String())
	return out
}

// splitPipe splits system|code at the first unescaped |.
func splitPipe(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			continue
		}
		if s[i] == '|' {
			return unescapePipe(s[:i]), unescapePipe(s[i+1:]), true
		}
	}
	return unescapePipe(s), "", false
}

func unescapePipe(s string) string { return strings.ReplaceAll(s, `\|`, "|") }

var prefixes = []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}

func splitPrefix(s string) (string, string) {
	if len(s) > 2 {
		for _, p := range prefixes {
			if strings.HasPrefix(s, p) && (s[2] >= '0' && s[2] <= '9' || s[2] == '-' || s[2] == '.') {
				return p, s[2:]
			}
		}
	}
	return "eq", s
}

func parseValue(p *SearchParam, mod, raw string, opt QueryOptions) (Value, error) {
	v := Value{Raw: raw}
	if raw == "" {
		return v, fmt.Errorf("empty value")
	}
	switch p.Type {
	case TypeString:
		v.Str = NormalizeString(raw)
		if mod == "exact" {
			v.Str = raw
		}
	case TypeURI:
		v.Str = raw
	case TypeToken:
		if mod == "text" {
			v.Str = NormalizeString(raw)
			return v, nil
		}
		sys, code, has := splitPipe(raw)
		if has {
			v.System, v.Code, v.HasSystem = sys, code, true
		} else {
			v.Code = sys
		}
	case TypeDate:
		v.Prefix, raw = splitPrefix(raw)
		d, err := ParseDateTime("search", raw, opt.Loc)
		if err != nil {
			return v, err
		}
		lo, hi := d.Range()
		v.Lo, v.Hi = lo.UnixMicro(), hi.UnixMicro()
		if v.Prefix == "ap" {
			// Approximately: widen by 10% of the distance to now, at least one day.
			gap := opt.Now.Sub(lo)
			if gap < 0 {
				gap = -gap
			}
			w := max(gap/10, 24*time.Hour)
			v.Lo, v.Hi = lo.Add(-w).UnixMicro(), hi.Add(w).UnixMicro()
		}
	case TypeNumber, TypeQuantity:
		v.Prefix, raw = splitPrefix(raw)
		num := raw
		if p.Type == TypeQuantity {
			parts := strings.SplitN(raw, "|", 3)
			num = parts[0]
			if len(parts) == 3 {
				v.System, v.Code, v.HasSystem = parts[1], parts[2], true
			} else if len(parts) == 2 {
				return v, fmt.Errorf("a quantity is number, number|system|code or number||code")
			}
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return v, fmt.Errorf("%q is not a number", num)
		}
		v.Num = f
		// Implicit precision: "100" means [99.5, 100.5).
		half := 0.5 * math.Pow10(-decimals(num))
		v.NumLo, v.NumHi = f-half, f+half
		if v.Prefix == "ap" {
			w := math.Abs(f) * 0.1
			v.NumLo, v.NumHi = f-w, f+w
		}
	case TypeReference:
		ref := raw
		if opt.Base != "" && strings.HasPrefix(ref, opt.Base+"/") {
			ref = ref[len(opt.Base)+1:]
		}
		if t, id, _, ok := SplitReference(ref); ok {
			if mod != "" && mod != t {
				return v, fmt.Errorf("the value names a %s, the modifier a %s", t, mod)
			}
			if !contains(p.Targets, t) {
				return v, fmt.Errorf("%s cannot point to a %s", p.Code, t)
			}
			v.RefType, v.RefID = t, id
			return v, nil
		}
		if strings.Contains(ref, "/") || strings.Contains(ref, ":") {
			v.RefURL = raw
			return v, nil
		}
		if !ValidID(ref) {
			return v, fmt.Errorf("%q is not a valid id or reference", ref)
		}
		v.RefID = ref
		if mod != "" {
			v.RefType = mod
		} else if len(p.Targets) == 1 {
			v.RefType = p.Targets[0]
		}
	}
	return v, nil
}

// decimals counts the digits after the decimal point of a number as written (exponent aware).
func decimals(s string) int {
	mant, exp, _ := strings.Cut(strings.ToLower(s), "e")
	n := 0
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		n = len(mant) - i - 1
	}
	if exp != "" {
		e, err := strconv.Atoi(exp)
		if err == nil {
			n -= e
		}
	}
	return n
}
