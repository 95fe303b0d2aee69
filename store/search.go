package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/carta-fhir/carta/fhir"
)

// Page is one page of search results.
type Page struct {
	Matches  []*Stored
	Included []*Stored
	// Total is the number of matches of the whole search, or -1 when it was not counted.
	Total int
	// Next and Prev are cursors for the following and preceding pages ("" when there is none).
	Next, Prev string
	// Warnings explain what was left out (an include cut at fhir.MaxIncludes, a type the caller may not read).
	Warnings []fhir.Issue
}

// sqlb accumulates SQL text and its arguments.
type sqlb struct {
	b    strings.Builder
	args []any
}

func (q *sqlb) w(parts ...string) {
	for _, p := range parts {
		q.b.WriteString(p)
	}
}

func (q *sqlb) arg(v any) {
	q.b.WriteByte('?')
	q.args = append(q.args, v)
}

func (q *sqlb) list(vs []string) {
	q.b.WriteByte('(')
	for i, v := range vs {
		if i > 0 {
			q.b.WriteString(", ")
		}
		q.arg(v)
	}
	q.b.WriteByte(')')
}

// maxRune bounds prefix ranges: every string starting with p sorts before p+maxRune in byte order.
var maxRune = string(utf8.MaxRune)

func indexTable(t fhir.ParamType) string {
	switch t {
	case fhir.TypeString:
		return "idx_string"
	case fhir.TypeToken:
		return "idx_token"
	case fhir.TypeReference:
		return "idx_ref"
	case fhir.TypeDate:
		return "idx_date"
	case fhir.TypeNumber:
		return "idx_number"
	case fhir.TypeQuantity:
		return "idx_quantity"
	default:
		return "idx_uri"
	}
}

// builder writes predicates for one search. acc limits every resource the predicates touch.
type builder struct {
	s   *Store
	acc *fhir.Access
	n   int // alias counter
}

func (bd *builder) alias(prefix string) string {
	bd.n++
	return prefix + strconv.Itoa(bd.n)
}

// clause writes a predicate that is true when the resource row r (of type typ) matches c.
func (bd *builder) clause(q *sqlb, r, typ string, c *fhir.Clause) error {
	switch {
	case c.Has != nil:
		g := bd.acc.ReadGrant(c.Has.Type)
		if !g.Allowed {
			return fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "_has:%s: the token's scopes do not allow reading %s", c.Has.Type, c.Has.Type)
		}
		x, h := bd.alias("x"), bd.alias("h")
		q.w(r, ".id IN (SELECT ", x, ".tid FROM idx_ref ", x, " JOIN resources ", h, " ON ", h, ".rid = ", x, ".rid WHERE ", x, ".pid = ")
		q.arg(ParamID(c.Has.Type, c.Has.Ref.Code))
		q.w(" AND ", x, ".ttype = ")
		q.arg(typ)
		q.w(" AND ", h, ".deleted = 0 AND ")
		if err := bd.clause(q, h, c.Has.Type, &c.Has.Clause); err != nil {
			return err
		}
		bd.visible(q, h, c.Has.Type)
		if err := bd.grantFilter(q, h, c.Has.Type, g); err != nil {
			return err
		}
		q.w(")")
		return nil
	case len(c.Chain) > 0:
		x, t := bd.alias("x"), bd.alias("t")
		q.w(r, ".rid IN (SELECT ", x, ".rid FROM idx_ref ", x, " JOIN resources ", t, " ON ", t, ".type = ", x, ".ttype AND ", t, ".id = ", x, ".tid WHERE ", x, ".pid = ")
		q.arg(ParamID(typ, c.Param.Code))
		q.w(" AND ", t, ".deleted = 0 AND (")
		any := false
		for i := range c.Chain {
			ct := &c.Chain[i]
			g := bd.acc.ReadGrant(ct.Type)
			if !g.Allowed {
				continue
			}
			if any {
				q.w(" OR ")
			}
			any = true
			q.w("(", t, ".type = ")
			q.arg(ct.Type)
			q.w(" AND ")
			if err := bd.clause(q, t, ct.Type, &ct.Clause); err != nil {
				return err
			}
			bd.visible(q, t, ct.Type)
			if err := bd.grantFilter(q, t, ct.Type, g); err != nil {
				return err
			}
			q.w(")")
		}
		if !any {
			q.w("1 = 0")
		}
		q.w("))")
		return nil
	case c.Param.Code == fhir.ParamID:
		return bd.idClause(q, r, c)
	case c.Param.Code == fhir.ParamLastUpdated:
		return bd.lastUpdatedClause(q, r, c)
	}
	table := indexTable(c.Param.Type)
	pid := ParamID(typ, c.Param.Code)
	if c.Modifier == "missing" {
		if c.Values[0].Missing {
			q.w(r, ".rid NOT IN (SELECT rid FROM ", table, " WHERE pid = ")
		} else {
			q.w(r, ".rid IN (SELECT rid FROM ", table, " WHERE pid = ")
		}
		q.arg(pid)
		q.w(")")
		return nil
	}
	var pos, neg []fhir.Value
	for _, v := range c.Values {
		if c.Modifier == "not" || v.Prefix == "ne" {
			neg = append(neg, v)
		} else {
			pos = append(pos, v)
		}
	}
	q.w("(")
	first := true
	sub := func(not bool, vals []fhir.Value) {
		if !first {
			q.w(" OR ")
		}
		first = false
		i := bd.alias("i")
		if not {
			q.w(r, ".rid NOT IN (SELECT ", i, ".rid FROM ", table, " ", i, " WHERE ", i, ".pid = ")
		} else {
			q.w(r, ".rid IN (SELECT ", i, ".rid FROM ", table, " ", i, " WHERE ", i, ".pid = ")
		}
		q.arg(pid)
		q.w(" AND (")
		for k, v := range vals {
			if k > 0 {
				q.w(" OR ")
			}
			bd.value(q, i, c.Param.Type, c.Modifier, v, not)
		}
		q.w("))")
	}
	if len(pos) > 0 {
		sub(false, pos)
	}
	for _, v := range neg {
		sub(true, []fhir.Value{v})
	}
	q.w(")")
	return nil
}

// value writes the predicate on index row i for one value. negated values (ne, :not) are written as their
// positive match; the caller wraps them in NOT IN, so a resource matches only if no value of it is equal.
func (bd *builder) value(q *sqlb, i string, pt fhir.ParamType, mod string, v fhir.Value, negated bool) {
	switch pt {
	case fhir.TypeString:
		switch mod {
		case "exact":
			q.w(i, ".exact = ")
			q.arg(truncIdx(v.Str))
		case "contains":
			q.w(i, ".norm LIKE ")
			q.arg("%" + likeEscape(v.Str) + "%")
			q.w(` ESCAPE '\'`)
		default:
			q.w("(", i, ".norm >= ")
			q.arg(truncIdx(v.Str))
			q.w(" AND ", i, ".norm < ")
			q.arg(truncIdx(v.Str) + maxRune)
			q.w(")")
		}
	case fhir.TypeToken:
		if mod == "text" {
			q.w("(", i, ".text >= ")
			q.arg(v.Str)
			q.w(" AND ", i, ".text < ")
			q.arg(v.Str + maxRune)
			q.w(")")
			return
		}
		switch {
		case v.HasSystem && v.Code == "":
			q.w(i, ".system = ")
			q.arg(v.System)
		case v.HasSystem:
			q.w("(", i, ".code = ")
			q.arg(v.Code)
			q.w(" AND ", i, ".system = ")
			q.arg(v.System)
			q.w(")")
		default:
			q.w(i, ".code = ")
			q.arg(v.Code)
		}
	case fhir.TypeReference:
		switch {
		case v.RefURL != "":
			q.w("(", i, ".tid = ")
			q.arg(v.RefURL)
			q.w(" AND ", i, ".ttype = '')")
		case v.RefType != "":
			q.w("(", i, ".tid = ")
			q.arg(v.RefID)
			q.w(" AND ", i, ".ttype = ")
			q.arg(v.RefType)
			q.w(")")
		default:
			q.w("(", i, ".tid = ")
			q.arg(v.RefID)
			q.w(" AND ", i, ".ttype <> '')")
		}
	case fhir.TypeDate:
		dateRange(q, i+".lo", i+".hi", v, negated)
	case fhir.TypeNumber:
		numberRange(q, i+".value", v, negated)
	case fhir.TypeQuantity:
		q.w("(")
		numberRange(q, i+".value", v, negated)
		if v.HasSystem {
			if v.System != "" {
				q.w(" AND ", i, ".system = ")
				q.arg(v.System)
			}
			q.w(" AND (", i, ".code = ")
			q.arg(v.Code)
			if v.System == "" {
				q.w(" OR ", i, ".unit = ")
				q.arg(v.Code)
			}
			q.w(")")
		}
		q.w(")")
	case fhir.TypeURI:
		switch mod {
		case "below":
			q.w("(", i, ".uri >= ")
			q.arg(v.Str)
			q.w(" AND ", i, ".uri < ")
			q.arg(v.Str + maxRune)
			q.w(")")
		case "above":
			q.w(i, ".uri IN ")
			q.list(uriPrefixes(v.Str))
		default:
			q.w(i, ".uri = ")
			q.arg(v.Str)
		}
	}
}

func truncIdx(s string) string {
	if len(s) <= 512 {
		return s
	}
	cut := 512
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut]
}

func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

func uriPrefixes(u string) []string {
	out := []string{u}
	for {
		i := strings.LastIndexByte(u, '/')
		if i <= 0 || strings.HasSuffix(u[:i], "/") || strings.HasSuffix(u[:i], ":") {
			break
		}
		u = u[:i]
		out = append(out, u)
	}
	return out
}

// dateRange writes the FHIR date comparison between an indexed interval [lo, hi) and the search value's interval.
func dateRange(q *sqlb, lo, hi string, v fhir.Value, negated bool) {
	p := v.Prefix
	if negated {
		p = "eq"
	}
	eq := func() {
		q.w("(", lo, " >= ")
		q.arg(v.Lo)
		q.w(" AND ", hi, " <= ")
		q.arg(v.Hi)
		q.w(")")
	}
	switch p {
	case "eq":
		eq()
	case "gt":
		q.w(hi, " > ")
		q.arg(v.Hi)
	case "lt":
		q.w(lo, " < ")
		q.arg(v.Lo)
	case "ge":
		q.w("(", hi, " > ")
		q.arg(v.Hi)
		q.w(" OR ")
		eq()
		q.w(")")
	case "le":
		q.w("(", lo, " < ")
		q.arg(v.Lo)
		q.w(" OR ")
		eq()
		q.w(")")
	case "sa":
		q.w(lo, " >= ")
		q.arg(v.Hi)
	case "eb":
		q.w(hi, " <= ")
		q.arg(v.Lo)
	case "ap":
		q.w("(", lo, " < ")
		q.arg(v.Hi)
		q.w(" AND ", hi, " > ")
		q.arg(v.Lo)
		q.w(")")
	}
}

func numberRange(q *sqlb, col string, v fhir.Value, negated bool) {
	p := v.Prefix
	if negated {
		p = "eq"
	}
	switch p {
	case "eq", "ap":
		q.w("(", col, " >= ")
		q.arg(v.NumLo)
		q.w(" AND ", col, " < ")
		q.arg(v.NumHi)
		q.w(")")
	case "gt", "sa":
		q.w(col, " > ")
		q.arg(v.Num)
	case "lt", "eb":
		q.w(col, " < ")
		q.arg(v.Num)
	case "ge":
		q.w(col, " >= ")
		q.arg(v.Num)
	case "le":
		q.w(col, " <= ")
		q.arg(v.Num)
	}
}

func (bd *builder) idClause(q *sqlb, r string, c *fhir.Clause) error {
	if c.Modifier == "missing" {
		if c.Values[0].Missing {
			q.w("1 = 0")
		} else {
			q.w("1 = 1")
		}
		return nil
	}
	if c.Modifier != "" && c.Modifier != "not" {
		return fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, "_id:"+c.Modifier, "modifier :%s is not supported on _id", c.Modifier)
	}
	ids := make([]string, 0, len(c.Values))
	for _, v := range c.Values {
		ids = append(ids, v.Code)
	}
	if c.Modifier == "not" {
		q.w(r, ".id NOT IN ")
	} else {
		q.w(r, ".id IN ")
	}
	q.list(ids)
	return nil
}

func (bd *builder) lastUpdatedClause(q *sqlb, r string, c *fhir.Clause) error {
	if c.Modifier == "missing" {
		if c.Values[0].Missing {
			q.w("1 = 0")
		} else {
			q.w("1 = 1")
		}
		return nil
	}
	// lastUpdated is an instant stored to the millisecond: the interval [updated, updated + 1 ms).
	lo := r + ".updated"
	hi := "(" + r + ".updated + 1000)"
	q.w("(")
	for i, v := range c.Values {
		if i > 0 {
			q.w(" OR ")
		}
		if v.Prefix == "ne" {
			q.w("NOT ")
		}
		dateRange(q, lo, hi, v, v.Prefix == "ne")
	}
	q.w(")")
	return nil
}

// visible adds the patient-compartment limit for rows of alias a (type typ, or "" when it varies).
func (bd *builder) visible(q *sqlb, a, typ string) {
	p := bd.acc.PatientOnly()
	if p == "" {
		return
	}
	switch {
	case typ != "" && fhir.Shared(typ):
	case typ != "" && !fhir.InCompartment(typ):
		q.w(" AND 1 = 0")
	case typ != "":
		q.w(" AND ", a, ".rid IN (SELECT c.rid FROM compartment c WHERE c.patient = ")
		q.arg(p)
		q.w(")")
	default:
		q.w(" AND (", a, ".type IN ")
		q.list(sharedList())
		q.w(" OR ", a, ".rid IN (SELECT c.rid FROM compartment c WHERE c.patient = ")
		q.arg(p)
		q.w("))")
	}
}

var sharedTypesSorted []string

func sharedList() []string {
	if sharedTypesSorted == nil {
		var out []string
		for _, t := range fhir.R4().ResourceTypes() {
			if fhir.Shared(t) {
				out = append(out, t)
			}
		}
		sharedTypesSorted = out
	}
	return sharedTypesSorted
}

// grantFilter adds a scope restriction (SMART v2 ?param=value) for rows of alias a of type typ.
func (bd *builder) grantFilter(q *sqlb, a, typ string, g fhir.Grant) error {
	if len(g.Filters) == 0 {
		return nil
	}
	q.w(" AND (")
	for i, f := range g.Filters {
		if i > 0 {
			q.w(" OR ")
		}
		q.w("(1 = 1")
		for k := range f {
			q.w(" AND ")
			if err := bd.clause(q, a, typ, &f[k]); err != nil {
				return err
			}
		}
		q.w(")")
	}
	q.w(")")
	return nil
}

// sortKey is one ORDER BY key: an SQL expression over the resource row r.
type sortKey struct {
	expr string
	desc bool
}

func sortKeys(typ string, keys []fhir.SortKey) []sortKey {
	out := make([]sortKey, 0, len(keys))
	for _, k := range keys {
		agg := "MIN"
		if k.Desc {
			agg = "MAX"
		}
		var e string
		switch k.Param.Code {
		case fhir.ParamID:
			e = "r.id"
		case fhir.ParamLastUpdated:
			e = "r.updated"
		default:
			col := map[fhir.ParamType]string{fhir.TypeString: "norm", fhir.TypeToken: "code", fhir.TypeDate: "lo",
				fhir.TypeNumber: "value", fhir.TypeQuantity: "value", fhir.TypeURI: "uri"}[k.Param.Type]
			if k.Param.Type == fhir.TypeDate && k.Desc {
				col = "hi"
			}
			e = fmt.Sprintf("(SELECT %s(s.%s) FROM %s s WHERE s.rid = r.rid AND s.pid = %d)", agg, col, indexTable(k.Param.Type), ParamID(typ, k.Param.Code))
		}
		out = append(out, sortKey{expr: e, desc: k.Desc})
	}
	return out
}

// cursor is the position after which (or before which, for Prev) a page starts: the sort key values and rid of a
// row. It travels base64url-encoded in the _cursor parameter.
type cursor struct {
	Prev bool  `json:"p,omitempty"`
	Keys []any `json:"k,omitempty"`
	RID  int64 `json:"r"`
}

func (c cursor) encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string, nkeys int) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		d := json.NewDecoder(strings.NewReader(string(b)))
		d.UseNumber()
		err = d.Decode(&c)
	}
	if err != nil || len(c.Keys) != nkeys {
		return c, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_cursor", "the paging cursor is not valid for this search; start again from the first page")
	}
	for i, k := range c.Keys {
		switch v := k.(type) {
		case nil, string:
		case json.Number:
			if n, err := v.Int64(); err == nil {
				c.Keys[i] = n
			} else if f, err := v.Float64(); err == nil {
				c.Keys[i] = f
			}
		default:
			return c, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_cursor", "the paging cursor is not valid for this search")
		}
	}
	return c, nil
}

// keyset writes the predicate selecting rows strictly after (or, reversed, before) the cursor in sort order.
// Sort keys put rows without a value last.
func keyset(q *sqlb, keys []sortKey, c cursor, reverse bool) {
	q.w(" AND (")
	for j := 0; j <= len(keys); j++ {
		if j > 0 {
			q.w(" OR ")
		}
		q.w("(1 = 1")
		for i := 0; i < j; i++ {
			if c.Keys[i] == nil {
				q.w(" AND ", keys[i].expr, " IS NULL")
			} else {
				q.w(" AND ", keys[i].expr, " = ")
				q.arg(c.Keys[i])
			}
		}
		if j == len(keys) {
			if reverse {
				q.w(" AND r.rid < ")
			} else {
				q.w(" AND r.rid > ")
			}
			q.arg(c.RID)
		} else {
			k, v := keys[j], c.Keys[j]
			asc := !k.desc
			if reverse {
				asc = !asc
			}
			op := " > "
			if !asc {
				op = " < "
			}
			switch {
			case v == nil && !reverse:
				q.w(" AND 1 = 0")
			case v == nil && reverse:
				q.w(" AND ", k.expr, " IS NOT NULL")
			case !reverse:
				q.w(" AND (", k.expr, " IS NULL OR ", k.expr, op)
				q.arg(v)
				q.w(")")
			default:
				q.w(" AND ", k.expr, op)
				q.arg(v)
			}
		}
		q.w(")")
	}
	q.w(")")
}

func orderBy(q *sqlb, keys []sortKey, reverse bool) {
	q.w(" ORDER BY ")
	for _, k := range keys {
		nulls, dir := "ASC", "ASC"
		if k.desc {
			dir = "DESC"
		}
		if reverse {
			nulls = "DESC"
			if dir == "ASC" {
				dir = "DESC"
			} else {
				dir = "ASC"
			}
		}
		q.w("(", k.expr, " IS NULL) ", nulls, ", ", k.expr, " ", dir, ", ")
	}
	if reverse {
		q.w("r.rid DESC")
	} else {
		q.w("r.rid ASC")
	}
}

// impliesType reports whether a clause selects rows through an index subquery that only holds rows of the
// searched type (its parameter id encodes the type). Leaving "r.type = ?" out then lets the database drive the
// search from that small candidate set instead of scanning every resource of the type.
func impliesType(c *fhir.Clause) bool {
	if len(c.Chain) > 0 {
		return true
	}
	if c.Has != nil || c.Param == nil || c.Param.Code == fhir.ParamID || c.Param.Code == fhir.ParamLastUpdated {
		return false
	}
	if c.Modifier == "missing" || c.Modifier == "not" {
		return false
	}
	for _, v := range c.Values {
		if v.Prefix == "ne" {
			return false
		}
	}
	return true
}

// where writes the WHERE clause shared by the page and count queries.
func (bd *builder) where(q *sqlb, query *fhir.Query) error {
	typed := false
	for i := range query.Clauses {
		if impliesType(&query.Clauses[i]) {
			typed = true
			break
		}
	}
	if typed {
		q.w(" WHERE r.deleted = 0")
	} else {
		q.w(" WHERE r.type = ")
		q.arg(query.Type)
		q.w(" AND r.deleted = 0")
	}
	for i := range query.Clauses {
		q.w(" AND ")
		if err := bd.clause(q, "r", query.Type, &query.Clauses[i]); err != nil {
			return err
		}
	}
	bd.visible(q, "r", query.Type)
	return bd.grantFilter(q, "r", query.Type, bd.acc.SearchGrant(query.Type))
}

// Search runs a search. The caller has checked that acc may search query.Type at all; acc's compartment and
// scope restrictions are applied inside the SQL, for the matches and for everything included.
func (s *Store) Search(ctx context.Context, query *fhir.Query, acc *fhir.Access) (*Page, error) {
	return s.search(ctx, cachedDB{s}, query, acc)
}

// Search runs a search inside the transaction.
func (t *Tx) Search(query *fhir.Query, acc *fhir.Access) (*Page, error) {
	return t.s.search(t.ctx, txQuerier{t}, query, acc)
}

// txQuerier runs a transaction's queries through the statement cache.
type txQuerier struct{ t *Tx }

func (q txQuerier) ExecContext(_ context.Context, s string, args ...any) (sql.Result, error) {
	return q.t.execContext(s, args...)
}

func (q txQuerier) QueryContext(_ context.Context, s string, args ...any) (*sql.Rows, error) {
	return q.t.queryContext(s, args...)
}

func (q txQuerier) QueryRowContext(_ context.Context, s string, args ...any) *sql.Row {
	return q.t.queryRow(s, args...)
}

func (s *Store) search(ctx context.Context, db querier, query *fhir.Query, acc *fhir.Access) (*Page, error) {
	page := &Page{Total: -1}
	keys := sortKeys(query.Type, query.Sort)
	var cur cursor
	hasCursor := query.Cursor != ""
	if hasCursor {
		var err error
		if cur, err = decodeCursor(query.Cursor, len(keys)); err != nil {
			return nil, err
		}
	}
	count := query.Count
	if query.Summary == "count" {
		count = 0
	}
	if count > 0 {
		bd := &builder{s: s, acc: acc}
		q := &sqlb{}
		q.w("SELECT r.rid, r.type, r.id, r.version, r.updated, r.raw")
		for _, k := range keys {
			q.w(", ", k.expr)
		}
		q.w(" FROM resources r")
		if err := bd.where(q, query); err != nil {
			return nil, err
		}
		if hasCursor {
			keyset(q, keys, cur, cur.Prev)
		}
		orderBy(q, keys, cur.Prev)
		q.w(" LIMIT ")
		q.arg(count + 1)
		rows, err := db.QueryContext(ctx, s.d.rebind(q.b.String()), q.args...)
		if err != nil {
			return nil, s.dbErr("searching", err)
		}
		type row struct {
			st   *Stored
			keys []any
		}
		var got []row
		for rows.Next() {
			st := &Stored{}
			var upd int64
			dest := []any{&st.rid, &st.Type, &st.ID, &st.Version, &upd, &st.Raw}
			kv := make([]any, len(keys))
			for i := range kv {
				dest = append(dest, &kv[i])
			}
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return nil, s.dbErr("searching", err)
			}
			st.Updated = fromMicros(upd)
			for i, v := range kv {
				if b, ok := v.([]byte); ok {
					kv[i] = string(b)
				}
			}
			got = append(got, row{st, kv})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, s.dbErr("searching", err)
		}
		more := len(got) > count
		if more {
			got = got[:count]
		}
		if cur.Prev {
			for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
				got[i], got[j] = got[j], got[i]
			}
		}
		for _, g := range got {
			page.Matches = append(page.Matches, g.st)
		}
		if len(got) > 0 {
			first, last := got[0], got[len(got)-1]
			if (!cur.Prev && more) || (cur.Prev && hasCursor) {
				page.Next = cursor{Keys: last.keys, RID: last.st.rid}.encode()
			}
			if (cur.Prev && more) || (!cur.Prev && hasCursor) {
				page.Prev = cursor{Prev: true, Keys: first.keys, RID: first.st.rid}.encode()
			}
		} else if hasCursor && !cur.Prev {
			page.Prev = cursor{Prev: true, Keys: cur.Keys, RID: cur.RID + 1}.encode()
		}
		if !hasCursor && !more && query.Total != "accurate" && query.Total != "estimate" {
			page.Total = len(got)
		}
	}
	if page.Total < 0 && (query.Total == "accurate" || query.Total == "estimate" || count == 0) {
		bd := &builder{s: s, acc: acc}
		q := &sqlb{}
		q.w("SELECT COUNT(*) FROM resources r")
		if err := bd.where(q, query); err != nil {
			return nil, err
		}
		if err := db.QueryRowContext(ctx, s.d.rebind(q.b.String()), q.args...).Scan(&page.Total); err != nil {
			return nil, s.dbErr("counting", err)
		}
	}
	if len(page.Matches) > 0 && (len(query.Includes) > 0 || len(query.RevIncludes) > 0) {
		if err := s.includes(ctx, db, query, acc, page); err != nil {
			return nil, err
		}
	}
	return page, nil
}

// includes adds the resources _include and _revinclude name, iterating (:iterate) up to three rounds.
func (s *Store) includes(ctx context.Context, db querier, query *fhir.Query, acc *fhir.Access, page *Page) error {
	seen := map[int64]bool{}
	for _, m := range page.Matches {
		seen[m.rid] = true
	}
	sources := page.Matches
	for round := 0; round < 3 && len(sources) > 0; round++ {
		var added []*Stored
		for _, inc := range query.Includes {
			if round > 0 && !inc.Iterate {
				continue
			}
			got, err := s.include(ctx, db, inc, sources, acc, page)
			if err != nil {
				return err
			}
			added = appendNew(added, got, seen)
		}
		for _, inc := range query.RevIncludes {
			if round > 0 && !inc.Iterate {
				continue
			}
			got, err := s.revInclude(ctx, db, inc, sources, acc, page)
			if err != nil {
				return err
			}
			added = appendNew(added, got, seen)
		}
		if len(page.Included)+len(added) > fhir.MaxIncludes {
			added = added[:fhir.MaxIncludes-len(page.Included)]
			page.Included = append(page.Included, added...)
			page.Warnings = append(page.Warnings, fhir.Issue{Severity: fhir.SeverityWarning, Code: fhir.IssueTooCostly,
				Diagnostics: fmt.Sprintf("included resources were cut at %d; use a smaller _count", fhir.MaxIncludes)})
			return nil
		}
		page.Included = append(page.Included, added...)
		sources = added
	}
	return nil
}

func appendNew(dst, got []*Stored, seen map[int64]bool) []*Stored {
	for _, g := range got {
		if !seen[g.rid] {
			seen[g.rid] = true
			dst = append(dst, g)
		}
	}
	return dst
}

func (s *Store) include(ctx context.Context, db querier, inc fhir.Include, sources []*Stored, acc *fhir.Access, page *Page) ([]*Stored, error) {
	var rids []any
	for _, src := range sources {
		if src.Type == inc.Type {
			rids = append(rids, src.rid)
		}
	}
	if len(rids) == 0 {
		return nil, nil
	}
	targets := inc.Param.Targets
	if inc.Target != "" {
		targets = []string{inc.Target}
	}
	bd := &builder{s: s, acc: acc}
	q := &sqlb{}
	q.w("SELECT r.rid, r.type, r.id, r.version, r.updated, r.raw FROM resources r WHERE r.deleted = 0 AND r.rid IN (SELECT t.rid FROM idx_ref x JOIN resources t ON t.type = x.ttype AND t.id = x.tid WHERE x.pid = ")
	q.arg(ParamID(inc.Type, inc.Param.Code))
	q.w(" AND x.rid IN (")
	for i, r := range rids {
		if i > 0 {
			q.w(", ")
		}
		q.arg(r)
	}
	q.w("))")
	if err := bd.typeGrants(q, targets, page); err != nil {
		return nil, err
	}
	bd.visible(q, "r", "")
	q.w(" LIMIT ")
	q.arg(fhir.MaxIncludes + 1)
	return s.scanStored(ctx, db, q)
}

// typeGrants limits r.type to the types the caller may read among types, with their scope filters.
func (bd *builder) typeGrants(q *sqlb, types []string, page *Page) error {
	var allowed []string
	var filtered []string
	grants := map[string]fhir.Grant{}
	for _, t := range types {
		g := bd.acc.ReadGrant(t)
		if !g.Allowed {
			continue
		}
		allowed = append(allowed, t)
		if len(g.Filters) > 0 {
			filtered = append(filtered, t)
			grants[t] = g
		}
	}
	if len(allowed) == 0 {
		q.w(" AND 1 = 0")
		return nil
	}
	if len(allowed) < len(types) || len(types) < 50 {
		sort.Strings(allowed)
		q.w(" AND r.type IN ")
		q.list(allowed)
	}
	for _, t := range filtered {
		q.w(" AND (r.type <> ")
		q.arg(t)
		q.w(" OR (1 = 1")
		if err := bd.grantFilter(q, "r", t, grants[t]); err != nil {
			return err
		}
		q.w("))")
	}
	return nil
}

func (s *Store) revInclude(ctx context.Context, db querier, inc fhir.Include, sources []*Stored, acc *fhir.Access, page *Page) ([]*Stored, error) {
	g := acc.ReadGrant(inc.Type)
	if !g.Allowed {
		page.Warnings = append(page.Warnings, fhir.Issue{Severity: fhir.SeverityWarning, Code: fhir.IssueForbidden,
			Diagnostics: fmt.Sprintf("_revinclude of %s was skipped: the token's scopes do not allow reading %s", inc.Type, inc.Type)})
		return nil, nil
	}
	byType := map[string][]string{}
	for _, src := range sources {
		if inc.Target != "" && src.Type != inc.Target {
			continue
		}
		if contains(inc.Param.Targets, src.Type) {
			byType[src.Type] = append(byType[src.Type], src.ID)
		}
	}
	if len(byType) == 0 {
		return nil, nil
	}
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types)
	bd := &builder{s: s, acc: acc}
	q := &sqlb{}
	q.w("SELECT r.rid, r.type, r.id, r.version, r.updated, r.raw FROM resources r WHERE r.type = ")
	q.arg(inc.Type)
	q.w(" AND r.deleted = 0 AND r.rid IN (SELECT x.rid FROM idx_ref x WHERE x.pid = ")
	q.arg(ParamID(inc.Type, inc.Param.Code))
	q.w(" AND (")
	for i, t := range types {
		if i > 0 {
			q.w(" OR ")
		}
		q.w("(x.ttype = ")
		q.arg(t)
		q.w(" AND x.tid IN ")
		q.list(byType[t])
		q.w(")")
	}
	q.w("))")
	bd.visible(q, "r", inc.Type)
	if err := bd.grantFilter(q, "r", inc.Type, g); err != nil {
		return nil, err
	}
	q.w(" LIMIT ")
	q.arg(fhir.MaxIncludes + 1)
	return s.scanStored(ctx, db, q)
}

func (s *Store) scanStored(ctx context.Context, db querier, q *sqlb) ([]*Stored, error) {
	rows, err := db.QueryContext(ctx, s.d.rebind(q.b.String()), q.args...)
	if err != nil {
		return nil, s.dbErr("searching", err)
	}
	defer rows.Close()
	var out []*Stored
	for rows.Next() {
		st := &Stored{}
		var upd int64
		if err := rows.Scan(&st.rid, &st.Type, &st.ID, &st.Version, &upd, &st.Raw); err != nil {
			return nil, s.dbErr("searching", err)
		}
		st.Updated = fromMicros(upd)
		out = append(out, st)
	}
	return out, rows.Err()
}

// matchAll returns up to limit current resources matching q (for conditional operations), ignoring paging.
func (t *Tx) matchAll(query *fhir.Query, acc *fhir.Access, limit int) ([]*Stored, error) {
	cp := *query
	cp.Count, cp.Cursor, cp.Sort, cp.Includes, cp.RevIncludes, cp.Total, cp.Summary = limit, "", nil, nil, nil, "none", ""
	page, err := t.s.search(t.ctx, txQuerier{t}, &cp, acc)
	if err != nil {
		return nil, err
	}
	return page.Matches, nil
}

// Match returns up to limit resources matching query inside the transaction (conditional update and delete).
func (t *Tx) Match(query *fhir.Query, acc *fhir.Access, limit int) ([]*Stored, error) {
	if err := t.lockConditional(query.Type); err != nil {
		return nil, err
	}
	return t.matchAll(query, acc, limit)
}

var cursorEncoding = base64.RawURLEncoding

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
