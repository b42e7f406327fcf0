{{
    config(
        materialized="incremental",
        unique_key="order_date",
        incremental_strategy="delete+insert",
    )
}}

{#- On incremental runs, rebuild only the last few days: late status changes land there. -#}
select
    order_date,
    count(*) as order_count,
    sum(total_amount) as revenue
from {{ ref('orders') }}
where status in ('{{ var("revenue_statuses") | join("', '") }}')
{%- if is_incremental() %}
  and order_date >= (
      select {{ dbt.dateadd("day", -(var("revenue_lookback_days") | int), "max(order_date)") }}
      from {{ this }}
  )
{%- endif %}
group by order_date
