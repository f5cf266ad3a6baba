// The shape a Grafana dashboard JSON file must have, built only from the types Grafana
// publishes in @grafana/schema (its classic, schemaVersion-numbered `Dashboard` and the panel
// plugins' `Options` / `FieldConfig`). hack/check-dashboard.sh type-checks a dashboard as an
// object literal `satisfies StrictDashboard`, so tsc reports wrong types, missing required
// fields, enum values Grafana does not know and (object literals being checked for excess
// properties) keys that the schema does not have.
import type {
  Dashboard,
  DataQuery,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from '@grafana/schema';
import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as Table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

// JSON holds an enum's value, not the enum: `${E}` turns a string enum into the union of its
// values ("absolute" | "percentage"); numeric enums already accept their literal values.
type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

// A panel plugin's stored options are merged into the plugin's defaults when the dashboard
// loads, so any option may be left out; what is written must still have the schema's type and
// name. Array items stay whole (a legend's `calcs` are strings, a threshold step needs `color`).
type Stored<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]?: Stored<T[K]> }
        : T;

// A Prometheus query. @grafana/schema 13 ships the base `DataQuery` but not the Prometheus
// data source's fields: these are those of the `Prometheus` query type that
// @grafana/prometheus publishes (not installed here: it pulls in React and Monaco).
type PrometheusQuery = Json<DataQuery> & {
  editorMode?: 'builder' | 'code';
  exemplar?: boolean;
  expr: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  intervalFactor?: number;
  legendFormat?: string;
  range?: boolean;
};

type PanelOf<Type extends string, Options, Custom> = Omit<
  Json<Panel>,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  options?: Stored<Options>;
  fieldConfig?: Omit<Json<FieldConfigSource>, 'defaults'> & {
    defaults: Omit<Json<FieldConfig>, 'custom'> & { custom?: Stored<Custom> };
  };
  targets?: PrometheusQuery[];
};

// One member per panel type the dashboard uses, told apart by `type`, so each panel is checked
// against its own plugin's options (a panel type not listed here is an error: add the plugin's
// types from @grafana/schema/dist/esm/raw/composable/<plugin>/panelcfg first).
export type StrictPanel =
  | PanelOf<'stat', Stat.Options, Record<never, never>>
  | PanelOf<'timeseries', TimeSeries.Options, TimeSeries.FieldConfig>
  | PanelOf<'table', Table.Options, Table.FieldConfig>;

export type StrictRow = Omit<Json<RowPanel>, 'panels'> & { panels: StrictPanel[] };

export type StrictDashboard = Omit<Json<Dashboard>, 'panels'> & {
  panels?: Array<StrictRow | StrictPanel>;
};
