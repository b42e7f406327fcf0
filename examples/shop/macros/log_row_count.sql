{#-
    Log how many rows a model holds. Meant for `dbt run-operation`:

        dbt run-operation log_row_count                       # the customers model
        dbt run-operation log_row_count --args '{model_name: orders}'
-#}
{% macro log_row_count(model_name="customers") %}
    {%- if execute -%}
        {%- set relation = ref(model_name) -%}
        {%- set existing = adapter.get_relation(
            database=relation.database, schema=relation.schema, identifier=relation.identifier
        ) -%}
        {%- if existing is none -%}
            {{ log("log_row_count: " ~ relation ~ " does not exist yet; build it first", info=true) }}
        {%- else -%}
            {%- set result = run_query("select count(*) from " ~ existing) -%}
            {{ log("log_row_count: " ~ existing ~ " has " ~ result.columns[0].values()[0] ~ " rows", info=true) }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}
