{{ config(materialized='ephemeral') }}
select id, lower(name) as name, kind from {{ ref('stg_items') }} where id is not null
