-- The raw tables are loaded by `dbt seed`; this hint orders seed -> model in `dbt build`.
-- depends_on: {{ ref('raw_customers') }}

select
    id as customer_id,
    first_name,
    last_name,
    first_name || ' ' || last_name as full_name,
    lower(email) as email,
    city,
    cast(signed_up_at as date) as signed_up_on,
    cast(updated_at as timestamp) as updated_at
from {{ source('shop_raw', 'raw_customers') }}
