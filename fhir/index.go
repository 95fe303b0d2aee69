package fhir

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// Index is what one resource contributes to the search indexes: one entry per value per parameter. It is computed
// from the resource with the registry's expressions and written in the same transaction as the resource.
type Index struct {
	Strings    []StringEntry
	Tokens     []TokenEntry
	Refs       []RefEntry
	Dates      []DateEntry
	Numbers    []NumberEntry
	Quantities []QuantityEntry
	URIs       []URIEntry
}

// StringEntry is a string parameter value: Norm is lower-cased without accents (for the default starts-with and
// :contains matches), Exact is the value as written (for :exact).
type StringEntry struct{ Param, Norm, Exact string }

// TokenEntry is a token parameter value. An entry with Code "" and Text set carries the display text that
// :text searches.
type TokenEntry struct{ Param, System, Code, Text string }

// RefEntry is a reference parameter value: a local reference has Type and ID; anything else (an absolute URL
// outside this server, a canonical) has URL.
type RefEntry struct{ Param, Type, ID, Version, URL string }

// DateEntry is a date parameter value as the half-open interval [Lo, Hi) of microseconds since the Unix epoch.
type DateEntry struct {
	Param  string
	Lo, Hi int64
}

// NumberEntry is a number parameter value.
type NumberEntry struct {
	Param string
	Value float64
}

// QuantityEntry is a quantity parameter value.
type QuantityEntry struct {
	Param, System, Code, Unit string
	Value                     float64
}

// URIEntry is a uri parameter value.
type URIEntry struct{ Param, URI string }

// MinTime and MaxTime stand for the open ends of a Period without start or end.
const (
	MinTime int64 = math.MinInt64 / 2
	MaxTime int64 = math.MaxInt64 / 2
)

// maxIndexedString bounds indexed strings so that index keys stay within database limits (PostgreSQL btree rows
// must stay under ~2.7 kB). Searches compare the first maxIndexedString bytes.
const maxIndexedString = 512

// Indexer extracts index entries.
type Indexer struct {
	// Base is the server's FHIR base URL; absolute references under it are indexed as local references.
	Base string
	// Loc is the zone given to dates and times written without one.
	Loc *time.Location
}

// Extract computes the index entries of a parsed, valid resource.
func (x *Indexer) Extract(res *Object) *Index {
	idx := &Index{}
	typ := res.String("resourceType")
	for _, p := range Params().For(typ) {
		if p.Expression == nil {
			continue
		}
		for _, it := range p.Expression.Eval(res) {
			x.add(idx, p, it)
		}
	}
	idx.dedupe()
	return idx
}

// Values returns the index entries of one parameter for a resource (used to check scope restrictions on writes).
func (x *Indexer) Values(res *Object, p *SearchParam) *Index {
	idx := &Index{}
	if p.Expression != nil {
		for _, it := range p.Expression.Eval(res) {
			x.add(idx, p, it)
		}
	}
	return idx
}

// NormalizeString lower-cases s and removes accents, the form string search compares.
func NormalizeString(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(s)
	}
	var b strings.Builder
	for _, r := range norm.NFD.String(s) {
		if unicode.Is(unicode.Mn, r) {
			continue
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return norm.NFC.String(b.String())
}

func truncate(s string) string {
	if len(s) <= maxIndexedString {
		return s
	}
	cut := maxIndexedString
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut]
}

func (x *Indexer) add(idx *Index, p *SearchParam, it Item) {
	o, _ := it.V.(*Object)
	switch p.Type {
	case TypeString:
		addString := func(s string) {
			if s != "" {
				idx.Strings = append(idx.Strings, StringEntry{Param: p.Code, Norm: truncate(NormalizeString(s)), Exact: truncate(s)})
			}
		}
		switch {
		case o == nil:
			if s, ok := it.V.(string); ok {
				addString(s)
			}
		case it.Type == "HumanName":
			addString(o.String("text"))
			addString(o.String("family"))
			for _, k := range []string{"given", "prefix", "suffix"} {
				for _, s := range stringList(o, k) {
					addString(s)
				}
			}
		case it.Type == "Address":
			for _, s := range stringList(o, "line") {
				addString(s)
			}
			for _, k := range []string{"text", "city", "district", "state", "postalCode", "country"} {
				addString(o.String(k))
			}
		case it.Type == "CodeableConcept":
			addString(o.String("text"))
		}
	case TypeToken:
		addTok := func(system, code string) {
			if code != "" || system != "" {
				idx.Tokens = append(idx.Tokens, TokenEntry{Param: p.Code, System: truncate(system), Code: truncate(code)})
			}
		}
		addText := func(s string) {
			if s != "" {
				idx.Tokens = append(idx.Tokens, TokenEntry{Param: p.Code, Text: truncate(NormalizeString(s))})
			}
		}
		switch it.Type {
		case "Coding":
			addTok(o.String("system"), o.String("code"))
			addText(o.String("display"))
		case "CodeableConcept":
			if arr, ok := mustArray(o, "coding"); ok {
				for _, c := range arr {
					if co, ok := c.(*Object); ok {
						addTok(co.String("system"), co.String("code"))
						addText(co.String("display"))
					}
				}
			}
			addText(o.String("text"))
		case "Identifier":
			addTok(o.String("system"), o.String("value"))
			if t := o.Object("type"); t != nil {
				addText(t.String("text"))
			}
		case "ContactPoint":
			addTok(o.String("system"), o.String("value"))
		case "boolean":
			if b, ok := it.V.(bool); ok {
				addTok("", strconv.FormatBool(b))
			}
		case "code":
			if s, ok := it.V.(string); ok {
				system := ""
				if it.Elem != nil && it.Elem.Binding != "" {
					if vs := R4().ValueSets[it.Elem.Binding]; vs != nil {
						system = vs.System(s)
					}
				}
				addTok(system, s)
			}
		default:
			switch v := it.V.(type) {
			case string:
				addTok("", v)
			case json.Number:
				addTok("", string(v))
			}
		}
	case TypeReference:
		switch {
		case it.Type == "Reference" && o != nil:
			ref := o.String("reference")
			if ref == "" || strings.HasPrefix(ref, "#") {
				return
			}
			idx.Refs = append(idx.Refs, x.refEntry(p.Code, ref))
		case it.Type == "canonical" || it.Type == "uri" || it.Type == "url":
			if s, ok := it.V.(string); ok {
				idx.Refs = append(idx.Refs, RefEntry{Param: p.Code, URL: truncate(strings.SplitN(s, "|", 2)[0])})
			}
		}
	case TypeDate:
		lo, hi, ok := x.dateRange(it)
		if ok {
			idx.Dates = append(idx.Dates, DateEntry{Param: p.Code, Lo: lo, Hi: hi})
		}
	case TypeNumber:
		if n, ok := it.V.(json.Number); ok {
			if f, err := n.Float64(); err == nil {
				idx.Numbers = append(idx.Numbers, NumberEntry{Param: p.Code, Value: f})
			}
		}
	case TypeQuantity:
		if o == nil {
			return
		}
		switch it.Type {
		case "Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity":
			v, _ := o.Get("value")
			n, ok := v.(json.Number)
			if !ok {
				return
			}
			f, err := n.Float64()
			if err != nil {
				return
			}
			idx.Quantities = append(idx.Quantities, QuantityEntry{Param: p.Code, System: o.String("system"), Code: o.String("code"), Unit: o.String("unit"), Value: f})
		case "Money":
			v, _ := o.Get("value")
			n, ok := v.(json.Number)
			if !ok {
				return
			}
			if f, err := n.Float64(); err == nil {
				idx.Quantities = append(idx.Quantities, QuantityEntry{Param: p.Code, System: "urn:iso:std:iso:4217", Code: o.String("currency"), Value: f})
			}
		}
	case TypeURI:
		if s, ok := it.V.(string); ok {
			idx.URIs = append(idx.URIs, URIEntry{Param: p.Code, URI: truncate(s)})
		}
	}
}

func mustArray(o *Object, key string) ([]any, bool) {
	v, ok := o.Get(key)
	if !ok {
		return nil, false
	}
	a, ok := v.([]any)
	return a, ok
}

func stringList(o *Object, key string) []string {
	a, ok := mustArray(o, key)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(a))
	for _, e := range a {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// refEntry turns a literal reference into an index entry, making absolute references to this server local.
func (x *Indexer) refEntry(param, ref string) RefEntry {
	if x.Base != "" && strings.HasPrefix(ref, x.Base+"/") {
		ref = ref[len(x.Base)+1:]
	}
	if typ, id, ver, ok := SplitReference(ref); ok {
		return RefEntry{Param: param, Type: typ, ID: id, Version: ver}
	}
	return RefEntry{Param: param, URL: truncate(ref)}
}

// LocalReference resolves a reference string to a local Type/id when it names a resource on this server.
func (x *Indexer) LocalReference(ref string) (typ, id string, ok bool) {
	e := x.refEntry("", ref)
	return e.Type, e.ID, e.Type != ""
}

func (x *Indexer) dateRange(it Item) (lo, hi int64, ok bool) {
	parse := func(kind, s string) (int64, int64, bool) {
		d, err := ParseDateTime(kind, s, x.Loc)
		if err != nil {
			return 0, 0, false
		}
		l, h := d.Range()
		return l.UnixMicro(), h.UnixMicro(), true
	}
	switch it.Type {
	case "date", "dateTime", "instant":
		s, _ := it.V.(string)
		return parse(it.Type, s)
	case "Period":
		o, _ := it.V.(*Object)
		if o == nil {
			return 0, 0, false
		}
		lo, hi = MinTime, MaxTime
		if s := o.String("start"); s != "" {
			if l, _, ok := parse("dateTime", s); ok {
				lo = l
			}
		}
		if s := o.String("end"); s != "" {
			if _, h, ok := parse("dateTime", s); ok {
				hi = h
			}
		}
		return lo, hi, lo != MinTime || hi != MaxTime
	case "Timing":
		o, _ := it.V.(*Object)
		if o == nil {
			return 0, 0, false
		}
		events := stringList(o, "event")
		if len(events) == 0 {
			return 0, 0, false
		}
		lo, hi = MaxTime, MinTime
		for _, e := range events {
			if l, h, ok := parse("dateTime", e); ok {
				lo, hi = min(lo, l), max(hi, h)
			}
		}
		return lo, hi, lo <= hi
	}
	return 0, 0, false
}

func (idx *Index) dedupe() {
	idx.Strings = dedupe(idx.Strings)
	idx.Tokens = dedupe(idx.Tokens)
	idx.Refs = dedupe(idx.Refs)
	idx.Dates = dedupe(idx.Dates)
	idx.Numbers = dedupe(idx.Numbers)
	idx.Quantities = dedupe(idx.Quantities)
	idx.URIs = dedupe(idx.URIs)
}

func dedupe[T comparable](in []T) []T {
	if len(in) < 2 {
		return in
	}
	seen := make(map[T]struct{}, len(in))
	out := in[:0]
	for _, e := range in {
		if _, ok := seen[e]; ok {
			continue
		}
		seen[e] = struct{}{}
		out = append(out, e)
	}
	return out
}
