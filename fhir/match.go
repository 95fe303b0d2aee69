package fhir

import (
	"strings"
)

// Matches reports whether a resource (not yet stored) satisfies every clause, with the same semantics as the
// store's SQL. It checks writes against restricted scopes (patient/Observation.cu?category=vital-signs). Chains
// and _has cannot be checked without the database and never match.
func (x *Indexer) Matches(res *Object, clauses []Clause) bool {
	for i := range clauses {
		if !x.matchClause(res, &clauses[i]) {
			return false
		}
	}
	return true
}

func (x *Indexer) matchClause(res *Object, c *Clause) bool {
	if c.Has != nil || len(c.Chain) > 0 {
		return false
	}
	if c.Param.Code == ParamID {
		id := res.String("id")
		found := false
		for _, v := range c.Values {
			if v.Code == id {
				found = true
			}
		}
		return found != (c.Modifier == "not")
	}
	if c.Param.Expression == nil {
		return false
	}
	idx := x.Values(res, c.Param)
	n := len(idx.Strings) + len(idx.Tokens) + len(idx.Refs) + len(idx.Dates) + len(idx.Numbers) + len(idx.Quantities) + len(idx.URIs)
	if c.Modifier == "missing" {
		return (n == 0) == c.Values[0].Missing
	}
	any := false
	for _, v := range c.Values {
		neg := c.Modifier == "not" || v.Prefix == "ne"
		hit := x.matchValue(idx, c, v, neg)
		if neg {
			hit = !hit
		}
		if hit {
			any = true
		}
	}
	return any
}

// matchValue reports whether any index entry matches v (for a negated value: equals it).
func (x *Indexer) matchValue(idx *Index, c *Clause, v Value, neg bool) bool {
	switch c.Param.Type {
	case TypeString:
		for _, e := range idx.Strings {
			switch c.Modifier {
			case "exact":
				if e.Exact == v.Str {
					return true
				}
			case "contains":
				if strings.Contains(e.Norm, v.Str) {
					return true
				}
			default:
				if strings.HasPrefix(e.Norm, v.Str) {
					return true
				}
			}
		}
	case TypeToken:
		for _, e := range idx.Tokens {
			switch {
			case c.Modifier == "text":
				if e.Text != "" && strings.HasPrefix(e.Text, v.Str) {
					return true
				}
			case e.Text != "" && e.Code == "":
			case v.HasSystem && v.Code == "":
				if e.System == v.System {
					return true
				}
			case v.HasSystem:
				if e.System == v.System && e.Code == v.Code {
					return true
				}
			default:
				if e.Code == v.Code {
					return true
				}
			}
		}
	case TypeReference:
		for _, e := range idx.Refs {
			switch {
			case v.RefURL != "":
				if e.URL == v.RefURL {
					return true
				}
			case e.ID == v.RefID && (v.RefType == "" || e.Type == v.RefType):
				return true
			}
		}
	case TypeDate:
		for _, e := range idx.Dates {
			if dateMatches(e.Lo, e.Hi, v, neg) {
				return true
			}
		}
	case TypeNumber:
		for _, e := range idx.Numbers {
			if numberMatches(e.Value, v, neg) {
				return true
			}
		}
	case TypeQuantity:
		for _, e := range idx.Quantities {
			if !numberMatches(e.Value, v, neg) {
				continue
			}
			if v.HasSystem && ((v.System != "" && e.System != v.System) || (e.Code != v.Code && (v.System != "" || e.Unit != v.Code))) {
				continue
			}
			return true
		}
	case TypeURI:
		for _, e := range idx.URIs {
			switch c.Modifier {
			case "below":
				if strings.HasPrefix(e.URI, v.Str) {
					return true
				}
			case "above":
				if strings.HasPrefix(v.Str, e.URI) {
					return true
				}
			default:
				if e.URI == v.Str {
					return true
				}
			}
		}
	}
	return false
}

func dateMatches(lo, hi int64, v Value, neg bool) bool {
	p := v.Prefix
	if neg {
		p = "eq"
	}
	eq := lo >= v.Lo && hi <= v.Hi
	switch p {
	case "eq":
		return eq
	case "gt":
		return hi > v.Hi
	case "lt":
		return lo < v.Lo
	case "ge":
		return hi > v.Hi || eq
	case "le":
		return lo < v.Lo || eq
	case "sa":
		return lo >= v.Hi
	case "eb":
		return hi <= v.Lo
	case "ap":
		return lo < v.Hi && hi > v.Lo
	}
	return false
}

func numberMatches(x float64, v Value, neg bool) bool {
	p := v.Prefix
	if neg {
		p = "eq"
	}
	switch p {
	case "eq", "ap":
		return x >= v.NumLo && x < v.NumHi
	case "gt", "sa":
		return x > v.Num
	case "lt", "eb":
		return x < v.Num
	case "ge":
		return x >= v.Num
	case "le":
		return x <= v.Num
	}
	return false
}
